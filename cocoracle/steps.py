"""The pipeline's steps, each declared once: its command, inputs, outputs, the params keys it reads.

Both engines get their DAG from this table: workflow/rules/*.smk take each rule's input, output, params
and shell from it (adding only what is Snakemake's own: log, benchmark, resources, threads, conda, report
captions), and `cocoracle dvc-yaml` writes dvc.yaml's stages from it (cocoracle/dvc_yaml.py). A step's
code dependencies are not listed here: they are the import closure of its command (cocoracle/codedeps.py).

Paths are patterns: `{data}`, `{models}`, `{results}`, `{logs}` come from config.yaml, and a step's
wildcards (`{seed}`, `{stage}`, `{split}`, `{kind}`, `{base}`) from the job. Every step after `generate` runs once
per training seed of run.seeds, under `seed-S/` of the models, results and logs directories; the data split is
shared, and `seed_report` puts the seeds side by side. Adding a step is one `@step` function here and
one rule stanza for its resources; adding a flag is an edit of its function.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

from cocoracle.codedeps import code_files
from cocoracle.config import ORACLE_KINDS, SPLITS, InputError, is_hub_id, oracle_stages
from cocoracle.headline import SUFFIX

REPORT_PLOTS = ("accuracy", "oracle", "training")
LIVE_METRICS, LIVE_PLOTS = "metrics.json", "plots/metrics"  # what dvclive writes in its directory
ORACLE_SHARED_KEYS = ["oracle.tasks", "oracle.max_new_tokens", "oracle.batch_size"]
WILDCARD_TYPES: dict[str, Callable[[str], Any]] = {"seed": int, "stage": int, "split": str, "kind": str, "base": str}
THREADS = ["run.threads"]  # what every computing step reads besides its own section
FETCHED = "{models}/base/{base}"  # a hub model fetched at its revision: base 'model' (model.name) or 'oracle'
# config.yaml's keys and their types (workflow/schemas/config.schema.yaml): paths, and processes per training stage
CONFIG_KEYS: dict[str, type] = {"params_file": str, "data_dir": str, "models_dir": str, "results_dir": str,
                                "logs_dir": str, "benchmarks_dir": str, "train_processes": int}


@dataclass(frozen=True)
class Out:
    """One output: a file or directory pattern, and how DVC tracks it (out, metrics, plots or curves)."""

    pattern: str
    kind: str = "out"  # curves: a dvclive plots directory, plotted against its `step` column
    directory: bool = False


def _check_config(config: Any, params: dict[str, Any]) -> None:
    """config.yaml as workflow/schemas/config.schema.yaml describes it, and train.batch_size split evenly over
    its train_processes."""
    if not isinstance(config, dict):
        raise InputError(f"config: must be a mapping of {', '.join(CONFIG_KEYS)}, got {type(config).__name__}")
    for key in config:
        if key not in CONFIG_KEYS:
            raise InputError(f"config: {key}: unknown key (allowed: {', '.join(CONFIG_KEYS)})")
    for key, kind in CONFIG_KEYS.items():
        if key not in config:
            raise InputError(f"config: {key}: missing (required: {', '.join(CONFIG_KEYS)})")
        value = config[key]
        if kind is str and not (isinstance(value, str) and value):
            raise InputError(f"config: {key}: must be a non-empty path, got {value!r}")
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise InputError(f"config: {key}: must be an integer >= 1, got {value!r}")
    processes, batch = config["train_processes"], params["train"]["batch_size"]
    if batch % processes:
        raise InputError(f"train.batch_size: {batch} is not divisible by config train_processes ({processes})")


@dataclass(frozen=True)
class Layout:
    """Where things go (config.yaml) and the params that shape the DAG (params.yaml)."""

    params_file: str
    data: str
    models: str
    results: str
    logs: str
    train_processes: int
    params: dict[str, Any]
    root: Path  # the repository: its cocoracle/ is the code the steps depend on

    @classmethod
    def from_config(cls, config: dict[str, Any], params: dict[str, Any], root: str | Path) -> Layout:
        """The layout of config.yaml's values; InputError (one line naming the key) for a bad one."""
        _check_config(config, params)
        return cls(config["params_file"], config["data_dir"], config["models_dir"], config["results_dir"],
                   config["logs_dir"], config["train_processes"], params, Path(root))

    @property
    def seeds(self) -> list[int]:
        return list(self.params["run"]["seeds"])

    def per_seed(self, wildcards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each of these wildcard values once per training seed."""
        return [{"seed": seed, **values} for seed in self.seeds for values in wildcards]

    @property
    def held_out(self) -> str:
        """The split every figure is scored on: dev, or test for a study's final figures (run.held_out)."""
        return self.params["run"]["held_out"]

    @property
    def cache_splits(self) -> list[str]:
        """The splits whose activations are collected: the probes and oracles fit on train, choose on val and are
        scored on the held-out split."""
        return ["train", "val", self.held_out]

    @property
    def stages(self) -> list[int]:
        return list(range(self.params["coconut"]["num_stages"] + 1))

    @property
    def latent_stages(self) -> list[int]:
        """The stages with latent thoughts to collect and probe."""
        return self.stages[1:]

    @property
    def oracle_stages(self) -> list[int]:
        return oracle_stages(self.params)

    @property
    def model_base(self) -> str | None:
        """The directory stage 0 starts from: model.name's fetched copy (a hub id) or its own local directory;
        None for the tiny model trained from scratch."""
        name = self.params["model"]["name"]
        if name == "tiny":
            return None
        return self.fill(FETCHED, {"base": "model"}) if is_hub_id(name) else name

    def separate_base(self, seed: int | str = "{seed}") -> str:
        """The separate oracle's base model directory: the seed's stage-0 checkpoint, the fetched copy of a hub id
        (the stage-0 base's when it is the same model and revision), or a local directory."""
        separate, model = self.params["oracle"]["separate"], self.params["model"]
        base = separate["base"]
        if base == "stage-0":
            return f"{self.models}/seed-{seed}/stage-0"
        if not is_hub_id(base):
            return base
        shared = (base, separate.get("revision")) == (model["name"], model.get("revision"))
        return self.fill(FETCHED, {"base": "model" if shared else "oracle"})

    @property
    def fetched(self) -> list[dict[str, str]]:
        """The fetch jobs these params need: {'base': 'model'} and/or {'base': 'oracle'}."""
        wanted = [self.model_base] + ([self.separate_base()] if self.oracle_stages else [])
        return [{"base": which} for which in ("model", "oracle")
                if self.fill(FETCHED, {"base": which}) in wanted]

    def base_inputs(self, directory: str) -> list[str]:
        """What a step starting from a base directory declares: a fetched directory or a checkpoint (another
        step's output) as itself; a local directory of the user's as its files, so that replacing a weights
        file in it reruns the step under both engines (Snakemake dates a directory by its own mtime, which
        rewriting a file inside it does not change)."""
        fetched = [self.fill(FETCHED, {"base": b}) for b in ("model", "oracle")]
        if directory in fetched or directory.startswith(f"{self.models}/seed-"):
            return [directory]
        path = Path(directory)
        if not path.is_dir():
            raise InputError(f"{directory}: model directory not found")
        return sorted(str(file) for file in path.rglob("*") if file.is_file()
                      and not any(part.startswith(".") for part in file.relative_to(path).parts))

    def fill(self, pattern: str, wildcards: dict[str, Any] | None = None) -> str:
        """The pattern with the layout's directories filled in, and the wildcards given (others kept)."""
        values = {"data": self.data, "models": self.models, "results": self.results, "logs": self.logs,
                  **(wildcards or {})}
        return "".join(text + ("" if name is None else str(values.get(name, f"{{{name}}}")))
                       for text, name, _, _ in Formatter().parse(pattern))


@dataclass
class Job:
    """One run of a step: its arguments (after `cocoracle <command>`), inputs and the params keys it reads."""

    args: str
    inputs: dict[str, str | list[str]]
    params: list[str] = field(default_factory=list)
    launcher: str = ""  # a prefix such as torchrun's


@dataclass(frozen=True)
class Step:
    name: str  # the Snakemake rule
    command: str  # `cocoracle <command>`
    outputs: dict[str, Out]
    log: str
    dvc_stage: str  # the DVC stage name pattern
    instances: Callable[[Layout], list[dict[str, Any]]]  # the wildcard values this params' DAG holds
    job: Callable[..., Job]  # (layout, outputs filled in, **wildcards) -> Job

    def typed(self, wildcards: dict[str, str]) -> dict[str, Any]:
        """Snakemake's string wildcards as the step's values."""
        return {name: WILDCARD_TYPES[name](value) for name, value in wildcards.items()}

    def output_paths(self, layout: Layout, wildcards: dict[str, Any] | None = None) -> dict[str, str]:
        return {name: layout.fill(out.pattern, wildcards) for name, out in self.outputs.items()}

    def resolve(self, layout: Layout, wildcards: dict[str, Any]) -> tuple[Job, str]:
        """The job for these wildcard values, and its whole command line."""
        job = self.job(layout, Paths(self.output_paths(layout, wildcards)), **wildcards)
        log = layout.fill(self.log, wildcards)
        return job, f"{job.launcher}cocoracle {self.command} {job.args} --log {log}"

    def code(self, layout: Layout) -> list[str]:
        """The package files (in the layout's repository) the command imports, transitively."""
        return code_files(self.command, layout.root)


class Paths(dict):
    """A step's output paths by name, also as attributes (`out.checkpoint`)."""

    __getattr__ = dict.__getitem__


STEPS: dict[str, Step] = {}


def step(name: str, command: str, outputs: dict[str, Out], log: str, dvc_stage: str | None = None,
         instances: Callable[[Layout], list[dict[str, Any]]] = lambda layout: [{}]):
    """Register the decorated job function as a step of the pipeline."""
    def register(job: Callable[..., Job]) -> Callable[..., Job]:
        STEPS[name] = Step(name, command, outputs, log, dvc_stage or name, instances, job)
        return job
    return register


def param_values(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """{'a.b': params['a']['b'], ...}: what a job's rerun depends on."""
    out = {}
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def jobs(layout: Layout) -> Iterator[tuple[Step, dict[str, Any]]]:
    """Every (step, wildcard values) of the DAG these params make, in step order."""
    for declared in STEPS.values():
        for wildcards in declared.instances(layout):
            yield declared, wildcards


def oracle_train_keys(kind: str) -> list[str]:
    """The params one oracle's training reads."""
    return ORACLE_SHARED_KEYS + ["oracle.source_layer", "oracle.inject_layers", f"oracle.{kind}"]


def live_outputs(live: str) -> dict[str, Out]:
    """A dvclive directory's outputs: its summary (metrics.json, a metrics file) and its curves (plots)."""
    return {"live_metrics": Out(f"{live}/{LIVE_METRICS}"),
            "live_plots": Out(f"{live}/{LIVE_PLOTS}", kind="curves", directory=True)}


def live_dir(out: Paths) -> str:
    """The dvclive directory of a job's live_outputs."""
    return out.live_metrics.removesuffix(f"/{LIVE_METRICS}")


def _run(layout: Layout, root: str, seed: int) -> str:
    """A seed's directory under one of the layout's roots: e.g. models/seed-0."""
    return f"{root}/seed-{seed}"


def _caches(layout: Layout, seed: int, stage: int) -> dict[str, str]:
    """One stage's caches by role: train, val, and held_out (the split run.held_out names)."""
    cache = f"{_run(layout, layout.results, seed)}/activations/stage-{stage}"
    return {"train": f"{cache}/train", "val": f"{cache}/val", "held_out": f"{cache}/{layout.held_out}"}


def _checkpoint(layout: Layout, seed: int, stage: int) -> str:
    return f"{_run(layout, layout.models, seed)}/stage-{stage}"


@step("generate", "generate", outputs={split: Out(f"{{data}}/{split}.parquet") for split in SPLITS},
      log="{logs}/generate.log")
def generate(layout: Layout, out: Paths) -> Job:
    """Write the addition problems of every split (shared by every seed)."""
    return Job(f"--params {layout.params_file} --out {layout.data}", inputs={}, params=["data"])


@step("fetch_model", "fetch-model", outputs={"model": Out(FETCHED, directory=True)}, log="{logs}/fetch/{base}.log",
      dvc_stage="fetch_{base}_base", instances=lambda layout: layout.fetched)
def fetch_model(layout: Layout, out: Paths, base: str) -> Job:
    """Download a hub model at its pinned revision (the pipeline's only network step: a local rule on SLURM)."""
    keys = ["model.name", "model.revision"] if base == "model" else ["oracle.separate.base", "oracle.separate.revision"]
    return Job(f"--params {layout.params_file} --which {base} --out {out.model}", inputs={}, params=keys)


@step("train_stage", "train", log="{logs}/seed-{seed}/train/stage-{stage}.log",
      dvc_stage="train_stage_{stage}_seed_{seed}",
      outputs={"checkpoint": Out("{models}/seed-{seed}/stage-{stage}", directory=True),
               **live_outputs("{results}/seed-{seed}/train/stage-{stage}")},
      instances=lambda layout: layout.per_seed([{"stage": k} for k in layout.stages]))
def train_stage(layout: Layout, out: Paths, seed: int, stage: int) -> Job:
    """Train one curriculum stage, from the previous stage's checkpoint (stage 0: from the pretrained base, if any)."""
    init = [_checkpoint(layout, seed, stage - 1)] if stage else []
    base = [layout.model_base] if stage == 0 and layout.model_base else []
    processes = layout.train_processes
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage} --data {layout.data}"
               + "".join(f" --init {path}" for path in init) + "".join(f" --base {path}" for path in base)
               + f" --out {out.checkpoint} --live {live_dir(out)}",
               # trains on train, validates on val, and checks that every split fits the position table
               inputs={"data": [f"{layout.data}/{split}.parquet" for split in SPLITS], "init": init,
                       "base": [file for path in base for file in layout.base_inputs(path)]},
               params=["model", "coconut", "train", *THREADS],
               launcher=f"torchrun --standalone --nproc-per-node {processes} --no-python -- " if processes > 1 else "")


@step("evaluate_stage", "evaluate", log="{logs}/seed-{seed}/evaluate/stage-{stage}.log",
      dvc_stage="evaluate_stage_{stage}_seed_{seed}",
      outputs={"metrics": Out("{results}/seed-{seed}/eval/stage-{stage}.json"),
               "headline": Out("{results}/seed-{seed}/eval/stage-{stage}" + SUFFIX),
               "predictions": Out("{results}/seed-{seed}/eval/stage-{stage}-predictions.parquet")},
      instances=lambda layout: layout.per_seed([{"stage": k} for k in layout.stages]))
def evaluate_stage(layout: Layout, out: Paths, seed: int, stage: int) -> Job:
    """Answer accuracy of one stage's checkpoint, free generation and teacher-forced."""
    checkpoint = _checkpoint(layout, seed, stage)
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage} --data {layout.data}"
               f" --checkpoint {checkpoint} --metrics {out.metrics} --predictions {out.predictions}",
               inputs={"checkpoint": checkpoint,
                       "data": [f"{layout.data}/{split}.parquet" for split in layout.params["evaluate"]["splits"]]},
               params=["evaluate", *THREADS])


@step("intervene_stage", "intervene", log="{logs}/seed-{seed}/interventions/stage-{stage}.log",
      dvc_stage="intervene_stage_{stage}_seed_{seed}",
      outputs={"ablation_table": Out("{results}/seed-{seed}/interventions/stage-{stage}-ablation.csv"),
               "patching_table": Out("{results}/seed-{seed}/interventions/stage-{stage}-patching.csv"),
               "metrics": Out("{results}/seed-{seed}/interventions/stage-{stage}.json")},
      instances=lambda layout: layout.per_seed([{"stage": k} for k in layout.latent_stages]))
def intervene_stage(layout: Layout, out: Paths, seed: int, stage: int) -> Job:
    """Ablate and patch each thought of one latent stage's checkpoint: does the answer use it?"""
    checkpoint = _checkpoint(layout, seed, stage)
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage} --data {layout.data}"
               f" --checkpoint {checkpoint} --ablation-table {out.ablation_table}"
               f" --patching-table {out.patching_table} --metrics {out.metrics}",
               inputs={"checkpoint": checkpoint, "data": f"{layout.data}/{layout.held_out}.parquet"},
               params=["interventions", "run.held_out", *THREADS])


@step("collect_activations", "collect", log="{logs}/seed-{seed}/collect/stage-{stage}-{split}.log",
      dvc_stage="collect_stage_{stage}_{split}_seed_{seed}",
      outputs={"cache": Out("{results}/seed-{seed}/activations/stage-{stage}/{split}", directory=True)},
      instances=lambda layout: layout.per_seed([{"stage": k, "split": s} for k in layout.latent_stages
                                                for s in layout.cache_splits]))
def collect_activations(layout: Layout, out: Paths, seed: int, stage: int, split: str) -> Job:
    """Cache the activations at every latent thought of one split."""
    checkpoint = _checkpoint(layout, seed, stage)
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage} --split {split} --data {layout.data}"
               f" --checkpoint {checkpoint} --out {out.cache}",
               inputs={"checkpoint": checkpoint, "data": f"{layout.data}/{split}.parquet"},
               params=["activations", *THREADS])


@step("probe_stage", "probe", log="{logs}/seed-{seed}/probes/stage-{stage}.log",
      dvc_stage="probe_stage_{stage}_seed_{seed}",
      outputs={"table": Out("{results}/seed-{seed}/probes/stage-{stage}.csv"),
               "steps_table": Out("{results}/seed-{seed}/probes/stage-{stage}-steps.csv"),
               "heatmap": Out("{results}/seed-{seed}/probes/stage-{stage}.png", kind="plots"),
               "steps_heatmap": Out("{results}/seed-{seed}/probes/stage-{stage}-steps.png", kind="plots"),
               "metrics": Out("{results}/seed-{seed}/probes/stage-{stage}.json"),
               "headline": Out("{results}/seed-{seed}/probes/stage-{stage}" + SUFFIX)},
      instances=lambda layout: layout.per_seed([{"stage": k} for k in layout.latent_stages]))
def probe_stage(layout: Layout, out: Paths, seed: int, stage: int) -> Job:
    """Linear probes over one stage's activation caches."""
    caches = _caches(layout, seed, stage)
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage}"
               + "".join(f" --{role.replace('_', '-')} {cache}" for role, cache in caches.items())
               + f" --table {out.table} --steps-table {out.steps_table} --heatmap {out.heatmap}"
               f" --steps-heatmap {out.steps_heatmap} --metrics {out.metrics}",
               inputs=dict(caches), params=["probes", *THREADS])


@step("train_oracle", "train-oracle", log="{logs}/seed-{seed}/oracle/train-{kind}-stage-{stage}.log",
      dvc_stage="train_{kind}_oracle_stage_{stage}_seed_{seed}",
      outputs={"oracle": Out("{models}/seed-{seed}/oracle/{kind}/stage-{stage}", directory=True),
               **live_outputs("{results}/seed-{seed}/oracle-train/{kind}/stage-{stage}")},
      instances=lambda layout: layout.per_seed([{"kind": kind, "stage": k} for k in layout.oracle_stages
                                                for kind in ORACLE_KINDS]))
def train_oracle(layout: Layout, out: Paths, seed: int, kind: str, stage: int) -> Job:
    """Train the separate oracle or the self-oracle on one stage's activations."""
    checkpoint, caches = _checkpoint(layout, seed, stage), _caches(layout, seed, stage)
    base = layout.separate_base(seed)
    base_flag = f" --base {base}" if kind == "separate" else ""
    return Job(f"--params {layout.params_file} --seed {seed} --kind {kind} --stage {stage} --checkpoint {checkpoint}"
               f"{base_flag} --train {caches['train']} --val {caches['val']} --data {layout.data}"
               f" --out {out.oracle} --live {live_dir(out)}",
               inputs={"checkpoint": checkpoint, "base": layout.base_inputs(base) if kind == "separate" else [],
                       "train": caches["train"], "val": caches["val"], "data": f"{layout.data}/train.parquet"},
               params=oracle_train_keys(kind) + THREADS)


@step("evaluate_oracles", "evaluate-oracle", log="{logs}/seed-{seed}/oracle/evaluate-stage-{stage}.log",
      dvc_stage="evaluate_oracles_stage_{stage}_seed_{seed}",
      outputs={"table": Out("{results}/seed-{seed}/oracle/stage-{stage}.csv"),
               "metrics": Out("{results}/seed-{seed}/oracle/stage-{stage}.json"),
               "headline": Out("{results}/seed-{seed}/oracle/stage-{stage}" + SUFFIX),
               "predictions": Out("{results}/seed-{seed}/oracle/stage-{stage}-predictions.parquet")},
      instances=lambda layout: layout.per_seed([{"stage": k} for k in layout.oracle_stages]))
def evaluate_oracles(layout: Layout, out: Paths, seed: int, stage: int) -> Job:
    """Score both oracles of one stage on the held-out split, next to the trivial baselines."""
    oracles = {kind: f"{_run(layout, layout.models, seed)}/oracle/{kind}/stage-{stage}" for kind in ORACLE_KINDS}
    checkpoint, caches = _checkpoint(layout, seed, stage), _caches(layout, seed, stage)
    return Job(f"--params {layout.params_file} --seed {seed} --stage {stage} --checkpoint {checkpoint}"
               f" --separate {oracles['separate']} --self {oracles['self']} --train {caches['train']}"
               f" --held-out {caches['held_out']} --data {layout.data} --table {out.table} --metrics {out.metrics}"
               f" --predictions {out.predictions}",
               inputs={"checkpoint": checkpoint, "separate": oracles["separate"], "self_oracle": oracles["self"],
                       "train": caches["train"], "held_out": caches["held_out"],
                       "data": f"{layout.data}/{layout.held_out}.parquet"},
               params=ORACLE_SHARED_KEYS + THREADS)


def _seed_results(layout: Layout, seed: int) -> dict[str, list[str]]:
    """One seed's results files the reports read, by kind."""
    r, stages, latent, oracles = _run(layout, layout.results, seed), layout.stages, layout.latent_stages, \
        layout.oracle_stages
    return {"eval": [f"{r}/eval/stage-{k}.json" for k in stages],
            "probes": [f"{r}/probes/stage-{k}.json" for k in latent],
            "oracle_tables": [f"{r}/oracle/stage-{k}.csv" for k in oracles],
            "oracle_metrics": [f"{r}/oracle/stage-{k}.json" for k in oracles],
            "interventions": [f"{r}/interventions/stage-{k}.json" for k in latent]}


@step("report", "report", log="{logs}/seed-{seed}/report.log", dvc_stage="report_seed_{seed}",
      outputs={"report": Out("{results}/seed-{seed}/report.md"),
               **{name: Out(f"{{results}}/seed-{{seed}}/report/{name}.png", kind="plots") for name in REPORT_PLOTS},
               "accuracy_table": Out("{results}/seed-{seed}/report/accuracy.csv"),
               "page": Out("{results}/seed-{seed}/report/results.html")},
      instances=lambda layout: layout.per_seed([{}]))
def report(layout: Layout, out: Paths, seed: int) -> Job:
    """One seed's report.md, its plots, the answer-accuracy table and report.md as an HTML page, from every
    step's metrics, tables and curves."""
    r, stages, latent, oracles = _run(layout, layout.results, seed), layout.stages, layout.latent_stages, \
        layout.oracle_stages
    results = _seed_results(layout, seed)
    inputs: dict[str, str | list[str]] = {
        "eval": results["eval"], "probes": results["probes"],
        "heatmaps": [f"{r}/probes/stage-{k}.png" for k in latent],
        "step_heatmaps": [f"{r}/probes/stage-{k}-steps.png" for k in latent],
        "oracle_tables": results["oracle_tables"], "oracle_metrics": results["oracle_metrics"],
    }
    live = [f"{r}/train/stage-{k}" for k in stages] + [f"{r}/oracle-train/{kind}/stage-{k}" for k in oracles
                                                        for kind in ORACLE_KINDS]
    return Job("".join(f"--{name.replace('_', '-')} {' '.join(paths)} " for name, paths in inputs.items())
               + f"--train {' '.join(live)} --out {out.report} --plots {r}/report",
               inputs={**inputs, "train": [f"{d}/{LIVE_PLOTS}" for d in live]})


@step("seed_report", "seed-report", log="{logs}/seed-report.log",
      outputs={"report": Out("{results}/report.md"), "table": Out("{results}/report/seeds.csv"),
               "headline": Out("{results}/report/seeds" + SUFFIX, kind="metrics"),
               "plot": Out("{results}/report/seeds.png", kind="plots"), "page": Out("{results}/report/results.html")})
def seed_report(layout: Layout, out: Paths) -> Job:
    """The report that leads: every headline figure's mean and 95 % interval over the seeds, each seed's value
    beside it, and links to each seed's own report."""
    seeds = {seed: _seed_results(layout, seed) for seed in layout.seeds}
    reports = [f"{_run(layout, layout.results, seed)}/report.md" for seed in layout.seeds]
    args = " ".join(f"--run {seed}={_run(layout, layout.results, seed)}" for seed in layout.seeds)
    return Job(f"--params {layout.params_file} {args} --out {out.report} --table {out.table} --headline {out.headline}"
               f" --plot {out.plot} --page {out.page}",
               inputs={"results": [path for files in seeds.values() for paths in files.values() for path in paths],
                       "reports": reports},
               params=["run.seeds"])

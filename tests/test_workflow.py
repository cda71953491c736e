"""End to end: the smoke DAG through the real engines, and the incremental case in each.

The finished runs are the session's (conftest.py: one per engine); a test that changes params and reruns takes its
own copy of one."""
from __future__ import annotations

import base64
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import yaml

from cocoracle.config import load_params, read_yaml
from cocoracle.steps import Layout, jobs
from helpers_workflow import REPO, differing_outputs, repo_copy, run, set_param

pytestmark = pytest.mark.e2e
STAGES = (0, 1, 2)  # smoke params: coconut.num_stages = 2
SEEDS = (0, 1)  # smoke params: run.seeds


def _mtimes(repo, paths):
    return {p: (repo / p).stat().st_mtime_ns for p in paths}


def _check_outputs(repo):
    for split in ("train", "val", "dev", "test", "ood"):
        assert (repo / "data" / f"{split}.parquet").is_file()
    for seed in SEEDS:
        _check_seed(repo / "models" / f"seed-{seed}", repo / "results" / f"seed-{seed}")
    _check_across_seeds(repo)


def _check_across_seeds(repo):
    """results/report.md leads with every figure across the two seeds; DVC's metrics are the across-seed ones."""
    report = (repo / "results" / "report.md").read_text()
    assert report.startswith("# cocoracle results across 2 training seed(s)\n")
    assert "| stage 2 · dev · free generation | " in report and "(seed-1/report.md)" in report
    table = (repo / "results" / "report" / "seeds.csv").read_text().splitlines()
    assert table[0] == "section,figure,seeds,mean,sd,low,high,seed_0,seed_1"
    assert all(line.split(",")[2] == "2" for line in table[1:]), table[:3]
    headline = json.loads((repo / "results" / "report" / "seeds-headline.json").read_text())
    cell = headline["eval"]["stage-2"]["dev"]
    assert headline["seeds"] == 2 and cell["low"] <= cell["mean"] <= cell["high"]
    assert (repo / "results" / "report" / "seeds.png").read_bytes()[:4] == b"\x89PNG"


def _check_seed(models, results):
    for k in STAGES:
        ckpt = models / f"stage-{k}"
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
        assert not list(ckpt.glob("*.bin")) and not list(ckpt.glob("*.pt"))
        metrics = json.loads((results / "eval" / f"stage-{k}.json").read_text())
        assert {"val", "dev", "ood"} == set(metrics) - {"stage", "provenance"}  # test: final figures only
        assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0 and metrics["dev"]["n"] == 40
        assert (results / "train" / f"stage-{k}" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    for k in STAGES[1:]:
        for split in ("train", "val", "dev"):
            assert (results / "activations" / f"stage-{k}" / split / "manifest.json").is_file()
        probes = (results / "probes" / f"stage-{k}.csv").read_text().splitlines()
        assert probes[0] == "stage,tensor,thought,label,accuracy,baseline,val_accuracy,n,C,converged"
        assert len(probes) > 1
        assert (results / "probes" / f"stage-{k}.png").stat().st_size > 0
    for k in STAGES[1:]:
        for kind in ("separate", "self"):
            oracle = models / "oracle" / kind / f"stage-{k}"
            assert (oracle / "oracle.json").is_file() and list(oracle.glob("*.safetensors"))
        table = (results / "oracle" / f"stage-{k}.csv").read_text().splitlines()
        assert table[0].startswith("stage,oracle,condition,task,thought,n,exact_match,exact_match_any_order,"
                                   "token_f1,number_f1,exact_match_low,exact_match_high")
        conditions = {line.split(",")[2] for line in table[1:]}
        assert conditions == {"oracle", "shuffled", "random", "no_injection", "majority", "majority_per_position"}
        summary = json.loads((results / "oracle" / f"stage-{k}.json").read_text())
        tasks = {"step", "digit", "carry", "operands", "answer", "problem"}
        for kind in ("self", "separate"):
            assert set(summary[kind]) == tasks | {"selected_step", "selected_val_exact_match", "source_tensor",
                                                  "by_thought"}
            assert set(summary[kind]["by_thought"]) == tasks  # per task, each thought position of the stage
            assert all(set(cells) == {str(t) for t in range(k)} for cells in summary[kind]["by_thought"].values())
    report = (results / "report.md").read_text()
    assert all(f"\n| {k} |" in report for k in STAGES)  # accuracy table rows
    assert "| 2 | self | step |" in report and "| 1 | separate | carry |" in report  # oracle table rows
    references = report.split("### Beside two probe readers\n")[1].split("###")[0]
    assert "| 2 | step | all |" in references and "| layer_1: " in references  # the smoke model's hidden state 1 of 2
    for name in ("accuracy", "oracle", "training"):
        assert f"(report/{name}.png)" in report
        assert (results / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


UPSTREAM = ["data/train.parquet"] + [f"models/seed-0/stage-{k}/model.safetensors" for k in STAGES]
EVAL = [f"results/seed-0/eval/stage-{k}.json" for k in STAGES]
CACHES = [f"results/seed-0/activations/stage-{k}/{s}/manifest.json" for k in STAGES[1:]
          for s in ("train", "val", "dev")]
PROBES = [f"results/seed-0/probes/stage-{k}.json" for k in STAGES[1:]]
SEPARATE = [f"models/seed-0/oracle/separate/stage-{k}/oracle.json" for k in STAGES[1:]]
SELF = [f"models/seed-0/oracle/self/stage-{k}/oracle.json" for k in STAGES[1:]]
ORACLE_EVAL = [f"results/seed-0/oracle/stage-{k}.json" for k in STAGES[1:]]


def test_snakemake_runs_the_whole_dag(snakemake_copy):
    """The finished run, in a copy (as every test that changes a run gets it): all there, and nothing to do."""
    _check_outputs(snakemake_copy)
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_copy).stdout
    assert "Nothing to be done" in dry


def test_dvc_runs_the_whole_dag(dvc_copy):
    _check_outputs(dvc_copy)
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_copy).stdout or "{}")
    assert status == {}


def test_both_engines_write_the_same_bytes(snakemake_run, dvc_run):
    """Two runs of the same params and threads (one per engine): every data file, checkpoint, metrics file, curve,
    table and plot is byte-identical, or within the rare run-to-run noise (differing_outputs warns of each)."""
    alone, differ = differing_outputs(snakemake_run.repo, dvc_run.repo)
    assert not alone, alone
    assert not differ, differ


def test_core_count_changes_no_byte(snakemake_run, tmp_path):
    """Every step computes on run.threads threads whatever the engine's cores: seed 0's training, collection, probes
    and oracle training through stage 1, run on --cores 1 and on --cores 4, write the bytes of the session's run
    on --cores 2 (within the rare run-to-run noise that differing_outputs warns of). The two runs go side by side,
    each in its own copy."""
    targets = ["results/seed-0/probes/stage-1.json", "models/seed-0/oracle/self/stage-1",
               "models/seed-0/oracle/separate/stage-1"]

    def finished(cores: int):
        repo = repo_copy(tmp_path / f"cores-{cores}")
        run(["snakemake", "--cores", str(cores), *targets], cwd=repo)
        return cores, repo

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(finished, (1, 4)))
    for cores, repo in runs:
        made = {str(p.relative_to(repo)) for p in (repo / "models").rglob("*.safetensors")}
        assert {"models/seed-0/stage-1/model.safetensors",
                "models/seed-0/oracle/self/stage-1/model.safetensors"} <= made
        _, differ = differing_outputs(repo, snakemake_run.repo)  # the files both runs have
        assert not differ, (cores, differ)


def test_every_output_records_what_made_it(snakemake_repo):
    head = run(["git", "rev-parse", "HEAD"], cwd=snakemake_repo).stdout.strip()
    for path in ["models/seed-0/stage-1", "models/seed-0/oracle/self/stage-1",
                 "results/seed-0/activations/stage-1/train", "results/seed-0/eval/stage-1.json",
                 "results/seed-0/probes/stage-1.json", "results/seed-0/oracle/stage-1.json"]:
        shown = run(["cocoracle", "provenance", path], cwd=snakemake_repo).stdout
        assert f"git revision: {head}\n" in shown, (path, shown)  # the copy is one clean commit
        assert "params sha256: " in shown and "torch 2." in shown
        assert "training seed: 0\n" in shown and "torch threads: 1\n" in shown and "\ncpu: " in shown, shown
    shown = run(["cocoracle", "provenance", "models/seed-1/oracle/self/stage-1"], cwd=snakemake_repo).stdout
    assert "training seed: 1\n" in shown, shown
    checkpoint = run(["cocoracle", "provenance", "models/seed-0/stage-1"], cwd=snakemake_repo).stdout
    assert "  models/seed-0/stage-0  " in checkpoint and "  data/train.parquet  " in checkpoint


def test_resume_settings_rerun_nothing(snakemake_repo, dvc_repo):
    for repo in (snakemake_repo, dvc_repo):
        set_param(repo, "resume", "every_steps", 7)
    try:
        assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
        assert json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout or "{}") == {}
    finally:
        for repo in (snakemake_repo, dvc_repo):
            set_param(repo, "resume", "every_steps", None)


MODULES = sorted(str(path.relative_to(REPO)) for path in (REPO / "cocoracle").rglob("*.py"))


@contextmanager
def _edited(repo, module):
    """Append a comment to a module (new content and mtime), then put back its bytes and mtime."""
    path = repo / module
    text, mtime = path.read_bytes(), path.stat().st_mtime_ns
    path.write_bytes(text + b"\n# edited by a test\n")
    try:
        yield
    finally:
        path.write_bytes(text)
        os.utime(path, ns=(mtime, mtime))


def _code_jobs(repo, module) -> tuple[set[frozenset[str]], set[frozenset[str]], set[str]]:
    """Per cocoracle/codedeps.py: the jobs (by outputs) whose command imports module, those and every job
    downstream of them, and the DVC stages whose command imports it."""
    layout = Layout.from_config(read_yaml(repo / "config.yaml"), load_params(repo / "params.yaml"), repo)
    inputs, importing, stages = {}, set(), set()
    for step, wildcards in jobs(layout):
        key = frozenset(step.output_paths(layout, wildcards).values())
        job, _ = step.resolve(layout, wildcards)
        inputs[key] = {p for value in job.inputs.values() for p in ([value] if isinstance(value, str) else value)}
        if module in step.code(layout):
            importing.add(key)
            stages.add(layout.fill(step.dvc_stage, wildcards))
    rerun = set(importing)
    while True:  # the jobs downstream of a rerun rerun too
        more = {key for key in inputs if key not in rerun and any(inputs[key] & up for up in rerun)}
        if not more:
            return importing, rerun, stages
        rerun |= more


def _snakemake_plan(repo) -> dict[frozenset[str], set[str]]:
    """The jobs of a dry run (by outputs) with their inputs."""
    out = run(["snakemake", "-n", "--cores", "1"], cwd=repo).stdout
    planned = {}
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        if not block.startswith("all:"):
            planned[frozenset(fields["output"].split(", "))] = set(fields.get("input", "").split(", "))
    return planned


def test_editing_a_module_reruns_exactly_the_steps_that_import_it(snakemake_repo, dvc_repo):
    """Every package module: DVC plans exactly the stages whose command imports it; Snakemake plans those
    jobs, each with the module among its inputs, and the jobs downstream of them, and nothing else. (The two
    engines plan side by side, each in its own copy: each plan is one process on one core.)"""

    def dvc_plans():
        plans = {}
        for module in MODULES:
            with _edited(dvc_repo, module):
                plans[module] = set(json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout or "{}"))
        return plans

    with ThreadPoolExecutor(1) as pool:
        dvc_planned = pool.submit(dvc_plans)
        stages = {}
        for module in MODULES:
            importing, rerun, stages[module] = _code_jobs(snakemake_repo, module)
            with _edited(snakemake_repo, module):
                planned = _snakemake_plan(snakemake_repo)
            assert set(planned) == rerun, module
            assert {job for job, inputs in planned.items() if module in inputs} == importing, module
        dvc_planned = dvc_planned.result()
    for module in MODULES:
        assert dvc_planned[module] == stages[module], module
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_repo).stdout
    assert json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout or "{}") == {}


@pytest.mark.parametrize("module, stages", [
    ("cocoracle/atomic.py", 48),  # every one of the smoke DAG's 48 stages (23 per seed) writes through it
    ("cocoracle/probes.py", 4),  # probe_stage_{1,2}_seed_{0,1}
    ("cocoracle/interventions.py", 4),  # intervene_stage_{1,2}_seed_{0,1}
    ("cocoracle/train.py", 6),  # train_stage_{0..2}_seed_{0,1}
    ("cocoracle/oracle/evaluate.py", 4),  # evaluate_oracles_stage_{1,2}_seed_{0,1}
    ("cocoracle/report.py", 2),  # report_seed_{0,1}
    ("cocoracle/seed_report.py", 1),
    ("cocoracle/sync.py", 0),  # `cocoracle pull` is no step
])
def test_code_dependencies_match_what_the_code_imports(dvc_repo, module, stages):
    """Spot checks written by hand from the imports: the modules a hand-kept list once missed or got wrong."""
    with _edited(dvc_repo, module):
        status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_repo).stdout or "{}")
    assert len(status) == stages, sorted(status)


def test_snakemake_html_report_holds_the_figures_tables_and_run_statistics(snakemake_repo):
    """Every results table, report.md and figure is embedded byte for byte, in its category and (per stage) its
    subcategory, with its caption; nothing is left under "Other"; the run statistics are there."""
    run(["snakemake", "--report", "results/report.html", "--cores", "1"], cwd=snakemake_repo)
    html = (snakemake_repo / "results" / "report.html").read_text()

    def variable(name):  # the report's data: one line of JSON per JavaScript variable
        return json.loads(re.search(rf"^\s*var {name} = (\{{.*\}});$", html, re.M).group(1))

    results, categories = variable("results"), variable("categories")
    r, latent = "results/seed-0", STAGES[1:]  # smoke params: oracle.stages = all latent stages
    expected = {path: ("Results", "across seeds")
                for path in ("results/report.md", "results/report/seeds.csv", "results/report/seeds.png")}
    for seed in SEEDS:
        run_dir, where = f"results/seed-{seed}", f"seed {seed}"
        expected |= {f"{run_dir}/report.md": ("Results", where), f"{run_dir}/report/results.html": ("Results", where),
                     f"{run_dir}/report/training.png": ("Training", where),
                     f"{run_dir}/report/accuracy.csv": ("Coconut", where),
                     f"{run_dir}/report/accuracy.png": ("Coconut", where),
                     f"{run_dir}/report/oracle.png": ("Oracles", where),
                     **{f"{run_dir}/oracle/stage-{k}.csv": ("Oracles", f"{where}, stage {k}") for k in latent},
                     **{f"{run_dir}/probes/stage-{k}{end}": ("Probes", f"{where}, stage {k}") for k in latent
                        for end in (".csv", "-steps.csv", ".png", "-steps.png")}}
    placed = {path: (category, sub) for category, subs in categories.items() for sub, paths in subs.items()
              for path in paths}
    assert placed == expected
    for path in expected:
        result = results[path]
        assert base64.b64decode(result["data_uri"].split(";base64,")[1]) == (snakemake_repo / path).read_bytes()
        assert result["caption"].startswith("<p>") and result["labels"]["item"], path
        if path.startswith((f"{r}/oracle/", f"{r}/probes/")):  # per-stage captions name their stage
            assert f"stage {path.split('stage-')[1][0]}" in result["caption"], path
    assert results[f"{r}/report/results.html"]["mime_type"] == "text/html"  # shown in the page, not downloaded
    page, markdown = ((snakemake_repo / r / name).read_text() for name in ("report/results.html", "report.md"))
    assert page.count("<table>") == markdown.count("\n|---") > 5 and "<h2>Oracles</h2>" in page  # report.md's
    accuracy = (snakemake_repo / r / "report" / "accuracy.csv").read_text().splitlines()
    assert accuracy[0] == "stage,split,n,accuracy,accuracy_low,accuracy_high,teacher_forced,truncated"
    assert len(accuracy) == 1 + 3 * len(STAGES)  # val, dev and ood of every stage
    caption = results[f"{r}/report/accuracy.csv"]["caption"]  # the table itself, shown in its description
    assert all(f"<td>{cell}</td>" in caption for line in accuracy[1:] for cell in line.split(","))
    runtimes = json.loads(re.search(r"var runtimes_spec = (\{.*?\});\n", html).group(1))["data"]["values"]
    assert {"train_stage", "probe_stage", "train_oracle"} <= {job["rule"] for job in runtimes}
    assert all(job["runtime"] > 0 for job in runtimes if job["rule"] == "train_stage")
    assert not re.search(r"(src|href)=\"https?://", html), "the report must not load anything from the network"


def _planned_jobs(dry_run: str) -> set[str]:
    """Rule names in the job-stats table of a snakemake dry run."""
    return set(re.findall(r"^(\w+)\s+\d+$", dry_run, re.M)) - {"total"}


def test_snakemake_reruns_only_evaluation_after_an_evaluate_param_change(snakemake_copy):
    set_param(snakemake_copy, "evaluate", "extra_tokens", 5)
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_copy).stdout
    assert _planned_jobs(dry) == {"evaluate_stage", "report", "seed_report", "all"}, dry
    before = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES + EVAL)
    run(["snakemake", "--cores", "2"], cwd=snakemake_copy)
    after = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES + EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES), "another step reran"
    assert all(before[p] < after[p] for p in EVAL), "evaluation did not rerun"


def test_snakemake_reruns_only_probes_after_a_probe_param_change(snakemake_copy):
    set_param(snakemake_copy, "probes", "C_grid", [0.5])
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_copy).stdout
    assert _planned_jobs(dry) == {"probe_stage", "report", "seed_report", "all"}, dry
    before = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES)
    run(["snakemake", "--cores", "2"], cwd=snakemake_copy)
    after = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES), "an upstream step reran"
    assert all(before[p] < after[p] for p in PROBES), "probes did not rerun"


def test_dvc_reruns_only_evaluation_after_an_evaluate_param_change(dvc_copy):
    set_param(dvc_copy, "evaluate", "extra_tokens", 5)
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_copy).stdout)
    assert set(status) == {f"evaluate_stage_{k}_seed_{seed}" for k in STAGES for seed in SEEDS}
    before = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES + EVAL)
    out = run(["dvc", "repro"], cwd=dvc_copy).stdout
    after = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES + EVAL)
    assert "Running stage 'train_stage" not in out and "Running stage 'generate'" not in out
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES), "another step reran"
    assert all(before[p] < after[p] for p in EVAL), "evaluation did not rerun"


def test_dvc_reruns_only_probes_after_a_probe_param_change(dvc_copy):
    set_param(dvc_copy, "probes", "C_grid", [0.5])
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_copy).stdout)
    assert set(status) == {f"probe_stage_{k}_seed_{seed}" for k in STAGES[1:] for seed in SEEDS}
    before = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES)
    run(["dvc", "repro"], cwd=dvc_copy)
    after = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES), "an upstream step reran"
    assert all(before[p] < after[p] for p in PROBES), "probes did not rerun"


def test_snakemake_reruns_only_the_self_oracle_after_its_param_change(snakemake_copy):
    params = yaml.safe_load((snakemake_copy / "params.yaml").read_text())
    params["oracle"]["self"]["mix"] = 0.5
    (snakemake_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run(["snakemake", "-n", "--cores", "1"], cwd=snakemake_copy).stdout
    assert _planned_jobs(dry) == {"train_oracle", "evaluate_oracles", "report", "seed_report", "all"}, dry
    assert dry.count("rule train_oracle:") == 2 * len(SEEDS) and "output: models/seed-0/oracle/separate" not in dry, dry
    before = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    run(["snakemake", "--cores", "2"], cwd=snakemake_copy)
    after = _mtimes(snakemake_copy, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES + SEPARATE), "another step reran"
    assert all(before[p] < after[p] for p in SELF + ORACLE_EVAL), "the self-oracle did not rerun"


def test_dvc_reruns_only_the_self_oracle_after_its_param_change(dvc_copy):
    params = yaml.safe_load((dvc_copy / "params.yaml").read_text())
    params["oracle"]["self"]["mix"] = 0.5
    (dvc_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], cwd=dvc_copy).stdout)
    assert set(status) == {f"train_self_oracle_stage_{k}_seed_{seed}" for k in STAGES[1:] for seed in SEEDS}
    before = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    run(["dvc", "repro"], cwd=dvc_copy)
    after = _mtimes(dvc_copy, UPSTREAM + CACHES + PROBES + SEPARATE + SELF + ORACLE_EVAL)
    assert all(before[p] == after[p] for p in UPSTREAM + CACHES + PROBES + SEPARATE), "another step reran"
    assert all(before[p] < after[p] for p in SELF + ORACLE_EVAL), "the self-oracle did not rerun"


def test_bench_noop_times_no_op_and_incremental_planning(snakemake_copy):
    """scripts/bench_noop.py on a run both engines take as current: each command is a no-op; after a probe
    parameter is changed each plans exactly the probe steps (Snakemake also what follows them), and the run's
    params.yaml is put back."""
    params = (snakemake_copy / "params.yaml").read_text()
    run(["dvc", "commit", "-f", "-q"], cwd=snakemake_copy)  # DVC takes Snakemake's outputs as its own
    try:
        out = run([sys.executable, str(REPO / "scripts" / "bench_noop.py"), str(snakemake_copy), "--runs", "1",
                   "--change", "probes.max_iter=301"], cwd=REPO).stdout
    finally:
        (snakemake_copy / "dvc.lock").unlink()
    assert (snakemake_copy / "params.yaml").read_text() == params
    lines = [line for line in out.splitlines() if not line.startswith("FIGURE")]
    assert re.search(r"^snakemake -n .* no-op$", lines[1]) and re.search(r"^dvc status .* no-op$", lines[2]), out
    assert lines[3].endswith("after probes.max_iter=301: probe_stage x4, report x2, seed_report, all"), out
    probe_stages = sorted(f"probe_stage_{k}_seed_{seed}" for k in STAGES[1:] for seed in SEEDS)
    assert lines[4].endswith("after probes.max_iter=301: " + ", ".join(probe_stages)), out


def test_bench_oracle_eval_answers_as_decoding_every_item(snakemake_repo):
    """scripts/bench_oracle_eval.py on the finished run: the step's shared decoding and every item decoded give
    the same answers (the script fails otherwise), and it prints its ratio as a figure."""
    out = run([sys.executable, str(REPO / "scripts" / "bench_oracle_eval.py"), str(snakemake_repo)], cwd=REPO).stdout
    assert f"stage {STAGES[-1]}:" in out and "every answer the same both ways" in out, out
    assert re.search(r'^FIGURE\t\{"name": "oracle evaluation: each distinct question decoded once', out, re.M), out

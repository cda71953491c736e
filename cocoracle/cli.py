"""`cocoracle <step>`: one subcommand per pipeline step; each parses arguments and calls one function.

Each handler `cmd_<command>` imports the modules it needs itself: a step's code dependencies are the
import closure of this file's top level and its handler (cocoracle/codedeps.py), so a module a handler
does not import cannot rerun that step.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

from cocoracle.config import ORACLE_KINDS, SPLITS, THOUGHT_TASKS, InputError, load_params
from cocoracle.engine_lock import check_free
from cocoracle.numerics import pin_threads
from cocoracle.writer_lock import hold_writers
from cocoracle.writer_lock import release as release_writers

# the commands the pipeline's steps run (cocoracle/steps.py): they refuse while another engine's run holds the
# workspace (cocoracle/engine_lock.py), and hold the writer lock of each output they write, waiting for another
# live writer of it to end (cocoracle/writer_lock.py; the output options are each command's `writes`)
STEP_COMMANDS = {"generate", "fetch-model", "train", "evaluate", "intervene", "collect", "probe", "train-oracle",
                 "evaluate-oracle", "report", "seed-report"}


# Third-party chatter kept out of the step logs (what a step writes to stderr is the log of a SLURM job or of
# `dvc repro`, and under CI transformers' logger reaches the --log file): transformers' progress bars (weights
# loaded and saved) and the Hub's, which transformers follows, and transformers' warnings below errors. Set as
# environment variables, which the libraries read when first imported (after this; no handler is run before),
# so that cli.py imports none of them; a value the user set wins. The project's own bars are plain tqdm, on.
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                     "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
# the libraries' warnings every oracle training prints, about their own internals and nothing to act on:
# (category, message start, module)
QUIET_WARNINGS = [
    (UserWarning, "fan_in_fan_out is set to False but the target module is `Conv1D`", r"peft\."),  # GPT-2's LoRA
    (UserWarning, "Setting `save_embedding_layers` to `True`", r"peft\."),  # the oracle's added token rows
    (FutureWarning, "`is_gradient_checkpointing` is deprecated", r"transformers\."),  # called by peft
]


def _quiet_libraries() -> None:
    """QUIET_ENVIRONMENT and QUIET_WARNINGS, unless the user chose warnings (python -W, PYTHONWARNINGS)."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if not sys.warnoptions:
        for category, message, module in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", re.escape(message), category, module)


def _setup_logging(log_file: str | None) -> None:
    """Log to stderr, and to log_file from the first process (the only one without torchrun); third-party
    progress bars and warnings off (_quiet_libraries)."""
    _quiet_libraries()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and int(os.environ.get("RANK", "0")) == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cmd_check_params(args: argparse.Namespace) -> None:
    load_params(args.params)
    print(f"{args.params}: ok")


def cmd_generate(args: argparse.Namespace) -> None:
    from cocoracle.data import write_splits
    write_splits(load_params(args.params)["data"], args.out)


def cmd_fetch_model(args: argparse.Namespace) -> None:
    from cocoracle.fetch import fetch_base
    fetch_base(load_params(args.params), args.which, args.out)


def cmd_train(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.model import pick_device
    from cocoracle.train import train_stage
    train_stage(params, args.stage, args.data, args.init, args.out, args.live, pick_device(args.device),
                base=args.base)


def cmd_evaluate(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.evaluate import evaluate_stage
    from cocoracle.model import pick_device
    evaluate_stage(params, args.stage, args.checkpoint, args.data, args.metrics, args.predictions,
                   pick_device(args.device))


def cmd_intervene(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.interventions import intervene_stage
    from cocoracle.model import pick_device
    intervene_stage(params, args.stage, args.checkpoint, args.data, args.ablation_table, args.patching_table,
                    args.metrics, pick_device(args.device))


def cmd_collect(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.activations import collect_activations
    from cocoracle.model import pick_device
    collect_activations(params, args.stage, args.checkpoint, args.data, args.split, args.out, pick_device(args.device))


def cmd_probe(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.probes import run_probes
    run_probes(params, args.stage, {"train": args.train, "val": args.val, "test": args.held_out},
               {name: getattr(args, name) for name in ("table", "steps_table", "heatmap", "steps_heatmap", "metrics")})


def cmd_train_oracle(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.model import pick_device
    from cocoracle.oracle.train import train_oracle
    train_oracle(args.kind, params, args.stage, {"train": args.train, "val": args.val}, args.checkpoint, args.base,
                 args.data, args.out, args.live, pick_device(args.device))


def cmd_evaluate_oracle(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.seed)
    from cocoracle.model import pick_device
    from cocoracle.oracle.evaluate import evaluate_oracles
    evaluate_oracles(params, args.stage, args.checkpoint, {"separate": args.separate, "self": args.self_oracle},
                     {"train": args.train, "test": args.held_out}, args.data, args.table, args.metrics,
                     args.predictions, pick_device(args.device))


def cmd_ask(args: argparse.Namespace) -> None:
    from cocoracle.model import pick_device
    from cocoracle.oracle.ask import ask_paths, ask_problem
    checkpoint, oracle = ask_paths(args.checkpoint, args.oracle, args.config, args.params, args.stage, args.kind,
                                  args.seed)
    print(ask_problem(args.problem, checkpoint, oracle, args.task, pick_device(args.device)))


def cmd_report(args: argparse.Namespace) -> None:
    from cocoracle.report import write_report
    write_report(args.eval, args.probes, args.heatmaps, args.step_heatmaps, args.oracle_tables, args.oracle_metrics,
                 args.train, args.out, args.plots)


def cmd_seed_report(args: argparse.Namespace) -> None:
    from cocoracle.seed_report import write_seed_report
    write_seed_report(load_params(args.params), dict(args.run),
                      {"report": args.out, "table": args.table, "headline": args.headline, "plot": args.plot,
                       "page": args.page})


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from cocoracle.dvc_yaml import write_dvc_yaml
    write_dvc_yaml(load_params(args.params), args.config, args.out, check=args.check)


def cmd_pull(args: argparse.Namespace) -> None:
    from cocoracle.sync import pull
    pull(remote=args.remote, fetch=not args.no_fetch)


def cmd_commit(args: argparse.Namespace) -> None:
    from cocoracle.sync import commit
    commit()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is under --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the installed cocoracle version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version
        try:
            found = version("cocoracle")
        except PackageNotFoundError:
            found = "(not installed: pip install --no-deps -e .)"
        print(f"cocoracle {found}")
        parser.exit()


def _stage(text: str) -> int:
    """--stage: a curriculum stage number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"'{text}' is not a stage: 0, 1, 2, ...")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def _run_dir(text: str) -> tuple[int, Path]:
    seed, sep, directory = text.partition("=")
    if not sep or not seed.isdigit() or not directory:
        raise argparse.ArgumentTypeError(f"must be SEED=DIR, got {text!r}")
    return int(seed), Path(directory)


def _device(text: str) -> str:
    """--device: auto, cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device: auto, cpu, cuda or cuda:N")
    return text


def cmd_provenance(args: argparse.Namespace) -> None:
    from cocoracle.provenance import format_record, read
    print(format_record(read(args.path)))


def _parent(flag: str, **spec) -> argparse.ArgumentParser:
    """A parent parser holding one option that several subcommands share."""
    parent = _Parser(add_help=False)
    parent.add_argument(flag, **spec)
    return parent


def _paths(parser: argparse.ArgumentParser, **helps: str) -> None:
    """Required path options: `--name` (underscores become dashes) with its help."""
    for name, help in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, help=help)


def _writes(parser: argparse.ArgumentParser, *names: str) -> None:
    """Declare the options naming what the command writes (files or directories): it holds their writer locks
    (cocoracle/writer_lock.py) before touching any of them."""
    parser.set_defaults(writes=(*(parser.get_default("writes") or ()), *names))


def written(args: argparse.Namespace) -> list[str]:
    """The paths a parsed command writes: the values of its `writes` options."""
    return [str(getattr(args, name)) for name in getattr(args, "writes", ()) if getattr(args, name)]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cocoracle", description=__doc__)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    log = _parent("--log", help="also write the log to this file")
    params = _parent("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    device = _parent("--device", type=_device, default="auto",
                     help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    data = _parent("--data", default="data", help="directory of <split>.parquet (default: data)")
    seed = _parent("--seed", type=_seed, help="the training seed whose run this is (default: the first of run.seeds)")
    stage = _parent("--stage", type=_stage, required=True,
                    help="curriculum stage (0: text chain of thought; k: the first k steps are latent thoughts)")

    def command(name: str, func, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[log, *parents])
        p.set_defaults(func=func)
        return p

    command("check-params", cmd_check_params, "validate a parameter file and exit", params)
    p = command("generate", cmd_generate, "write the addition problems as <split>.parquet", params)
    p.add_argument("--out", default="data", help="output directory")
    _writes(p, "out")
    p = command("fetch-model", cmd_fetch_model, "download a Hugging Face base model at its pinned revision", params)
    p.add_argument("--which", required=True, choices=["model", "oracle"],
                   help="model: model.name at model.revision; oracle: oracle.separate.base at its revision")
    _paths(p, out="directory to write (config, safetensors weights, tokenizer)")
    _writes(p, "out")
    p = command("train", cmd_train, "train one Coconut curriculum stage", params, seed, device, data, stage)
    p.add_argument("--init", help="checkpoint to start from (the previous stage's; not for stage 0)")
    p.add_argument("--base", help="stage 0: directory holding model.name's weights (the fetched or local model)")
    _paths(p, out="checkpoint directory to write", live="dvclive directory for the training curves")
    _writes(p, "out", "live")
    p = command("evaluate", cmd_evaluate, "answer accuracy of one stage's checkpoint", params, seed, device, data,
                stage)
    _paths(p, checkpoint="checkpoint directory", metrics="metrics JSON to write",
           predictions="per-problem predictions parquet to write")
    _writes(p, "metrics", "predictions")
    p = command("intervene", cmd_intervene, "ablate and patch each thought of one latent stage; answer effects",
                params, seed, device, data, stage)
    _paths(p, checkpoint="the stage's Coconut checkpoint", ablation_table="CSV: ablation x thought x answer column",
           patching_table="CSV: patch x thought x column", metrics="JSON of both tables to write")
    _writes(p, "ablation_table", "patching_table", "metrics")
    p = command("collect", cmd_collect, "cache the activations at every latent thought of one split",
                params, seed, device, data, stage)
    p.add_argument("--split", required=True, choices=SPLITS)
    _paths(p, checkpoint="checkpoint directory", out="cache directory to write")
    _writes(p, "out")
    p = command("probe", cmd_probe, "linear probes over one stage's activation caches", params, seed, stage)
    _paths(p, train="train activation cache directory", val="val activation cache directory",
           held_out="the held-out split's activation cache (run.held_out: dev, or test for final figures)",
           table="CSV: each thought against its own step's labels",
           steps_table="CSV: every position against every step's labels", heatmap="PNG heatmap of the first table",
           steps_heatmap="PNG step x position heatmap", metrics="JSON summary (probes chosen on val) to write")
    _writes(p, "table", "steps_table", "heatmap", "steps_heatmap", "metrics")
    p = command("train-oracle", cmd_train_oracle, "train the separate oracle or the self-oracle of one stage",
                params, seed, device, data, stage)
    p.add_argument("--kind", required=True, choices=ORACLE_KINDS)
    p.add_argument("--base", help="separate oracle's base model: a checkpoint directory or Hugging Face id")
    _paths(p, checkpoint="the stage's Coconut checkpoint", train="train activation cache",
           val="val activation cache", out="oracle directory to write",
           live="dvclive directory for the training curves")
    _writes(p, "out", "live")
    p = command("evaluate-oracle", cmd_evaluate_oracle, "score both oracles of one stage next to trivial baselines",
                params, seed, device, data, stage)
    p.add_argument("--self", dest="self_oracle", required=True, help="self-oracle directory")
    _paths(p, checkpoint="the stage's Coconut checkpoint (answer accuracy before)",
           separate="separate oracle directory", train="train activation cache (majority baselines)",
           held_out="the held-out split's activation cache (the scored items)",
           table="CSV: metrics per oracle, condition, task and thought",
           metrics="JSON summary to write", predictions="per-item answers parquet to write")
    _writes(p, "table", "metrics", "predictions")
    p = command("ask", cmd_ask, "solve a new problem and ask the oracle what each latent thought computed", device)
    p.add_argument("problem", help='a sum such as "347 + 285"')
    p.add_argument("--config", default="config.yaml", help="wiring file: where the models are (default: config.yaml)")
    p.add_argument("--params", help="parameter file the defaults follow (default: config.yaml's params_file)")
    p.add_argument("--stage", type=_stage, help="the stage whose checkpoint and oracle are the defaults (default: the "
                   "last stage with oracles, the last of oracle.stages: coconut.num_stages unless left out)")
    p.add_argument("--kind", choices=ORACLE_KINDS, default="self", help="the default oracle (default: self)")
    p.add_argument("--seed", type=_seed, help="the training seed whose models are the defaults (default: the first "
                   "of run.seeds)")
    p.add_argument("--checkpoint", help="Coconut checkpoint (default: the stage's, e.g. models/seed-0/stage-3)")
    p.add_argument("--oracle", help="oracle directory (default: the stage's oracle of --kind, e.g. "
                   "models/seed-0/oracle/self/stage-3)")
    p.add_argument("--task", default="step", choices=THOUGHT_TASKS, help="question asked per thought")
    p = command("report", cmd_report, "results/report.md and its plots from the pipeline's outputs")
    for name, help in [("eval", "evaluation metrics JSON per stage"), ("probes", "probe summary JSON per stage"),
                       ("heatmaps", "probe heatmap PNG per stage"),
                       ("step-heatmaps", "step x position probe heatmap PNG per stage"),
                       ("oracle-tables", "oracle CSV per stage"),
                       ("oracle-metrics", "oracle JSON per stage"), ("train", "dvclive directories")]:
        p.add_argument(f"--{name}", nargs="*", default=[], help=help)
    _paths(p, out="markdown report to write", plots="directory for the report's PNG plots")
    _writes(p, "out", "plots")
    p = command("seed-report", cmd_seed_report, "results/report.md: every figure across the training seeds", params)
    p.add_argument("--run", type=_run_dir, action="append", required=True,
                   help="SEED=DIR: a seed's results directory (repeat per seed)")
    _paths(p, out="markdown report to write", table="CSV of every figure across seeds",
           headline="JSON of the headline figures across seeds (DVC metrics)", plot="PNG of the headline figures",
           page="HTML page of the report")
    _writes(p, "out", "table", "headline", "plot", "page")
    p = command("dvc-yaml", cmd_dvc_yaml, "write dvc.yaml from the step table for the parameter file", params)
    p.add_argument("--config", default="config.yaml", help="wiring file with the paths (default: config.yaml)")
    p.add_argument("--out", default="dvc.yaml", help="where to write (default: dvc.yaml)")
    p.add_argument("--check", action="store_true", help="write nothing; fail if the file is out of date")
    p = command("pull", cmd_pull, "dvc pull, check the outputs are current, record them for Snakemake")
    p.add_argument("--remote", help="DVC remote to pull from (default: the default remote)")
    p.add_argument("--no-fetch", action="store_true", help="`dvc checkout` from the local cache instead of pulling")
    command("commit", cmd_commit, "after a Snakemake run: check it is current, record its outputs for DVC "
            "(dvc commit --force)")
    p = command("provenance", cmd_provenance, "what made a checkpoint, oracle, cache or metrics file")
    p.add_argument("path", help="a checkpoint or oracle directory, a cache directory or a metrics JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; quietly (exit 1, no traceback) if its stdout's reader goes away, as in
    `cocoracle provenance … | head -1` (the Python docs' recipe: stdout onto devnull, so that the flush at exit
    does not fail again)."""
    try:
        try:
            code = _run(argv)
        except SystemExit:  # argparse's --help, --version and usage errors print, then exit
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args, argv)
    finally:  # the writer locks end with the command (the process's end releases them anyway)
        release_writers()


def _run_command(args: argparse.Namespace, argv: list[str] | None) -> int:
    start = time.perf_counter()
    try:
        waited = []
        if args.command in STEP_COMMANDS:  # before the log file too: another writer of the outputs writes it
            check_free()
            command = " ".join(["cocoracle", *(sys.argv[1:] if argv is None else argv)])
            waited = hold_writers(written(args), command, lambda line: print(f"cocoracle {args.command}: {line}",
                                                                             file=sys.stderr, flush=True))
        _setup_logging(args.log)
        for line in waited:
            logging.getLogger("cocoracle").info(line)
        if args.command in STEP_COMMANDS:
            if hasattr(args, "params"):  # every step computes on run.threads threads, whatever its cores
                pin_threads(load_params(args.params)["run"]["threads"])
        args.func(args)
    except InputError as exc:
        print(f"cocoracle {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # not the command's failure: main's
        raise
    except Exception:
        if args.log:  # keep the traceback in the declared log file too
            logging.getLogger("cocoracle").exception("cocoracle %s failed", args.command)
        raise
    if args.command in STEP_COMMANDS:  # exact, where Snakemake's benchmark files sample the whole process tree
        logging.getLogger("cocoracle").info("%s done in %.1f s, peak RSS of this process %.0f MB", args.command,
                                            time.perf_counter() - start, peak_rss_mb())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`cocoracle <step>`: one subcommand per pipeline step; each parses arguments and calls one function."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cocoracle.config import InputError, load_params


def _setup_logging(log_file: str | None) -> None:
    """Log to stderr, and to log_file from the first process (the only one without torchrun)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and int(os.environ.get("RANK", "0")) == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)


def cmd_check_params(args: argparse.Namespace) -> None:
    load_params(args.params)
    print(f"{args.params}: ok")


def cmd_generate(args: argparse.Namespace) -> None:
    from cocoracle.data import write_splits
    write_splits(load_params(args.params)["data"], args.out)


def cmd_train(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.model import pick_device
    from cocoracle.train import train_stage
    train_stage(params, args.stage, args.data, args.init, args.out, args.live, pick_device(args.device))


def cmd_evaluate(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.evaluate import evaluate_stage
    from cocoracle.model import pick_device
    evaluate_stage(params, args.stage, args.checkpoint, args.data, args.metrics, args.predictions,
                   pick_device(args.device))


def cmd_collect(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.activations import collect_activations
    from cocoracle.model import pick_device
    collect_activations(params, args.stage, args.checkpoint, args.data, args.split, args.out, pick_device(args.device))


def cmd_probe(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.probes import run_probes
    run_probes(params, args.stage, {"train": args.train, "val": args.val, "test": args.test}, args.table,
               args.heatmap, args.metrics)


def cmd_train_oracle(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.model import pick_device
    from cocoracle.oracle.train import train_oracle
    train_oracle(args.kind, params, args.stage, {"train": args.train, "val": args.val}, args.checkpoint, args.base,
                 args.data, args.out, args.live, pick_device(args.device))


def cmd_evaluate_oracle(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from cocoracle.model import pick_device
    from cocoracle.oracle.evaluate import evaluate_oracles
    evaluate_oracles(params, args.stage, args.checkpoint, {"separate": args.separate, "self": args.self_oracle},
                     {"train": args.train, "test": args.test}, args.data, args.table, args.metrics, args.predictions,
                     pick_device(args.device))


def cmd_ask(args: argparse.Namespace) -> None:
    from cocoracle.oracle.ask import ask_problem
    from cocoracle.model import pick_device
    print(ask_problem(args.problem, args.checkpoint, args.oracle, args.task, pick_device(args.device)))


def cmd_report(args: argparse.Namespace) -> None:
    from cocoracle.report import write_report
    write_report(args.eval, args.probes, args.heatmaps, args.oracle_tables, args.oracle_metrics, args.train,
                 args.out, args.plots)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from cocoracle.dvc_yaml import write_dvc_yaml
    write_dvc_yaml(load_params(args.params), args.config, args.out)


def cmd_pull(args: argparse.Namespace) -> None:
    from cocoracle.sync import pull
    pull(remote=args.remote, fetch=not args.no_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cocoracle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def step(name: str, func, help: str, params: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if params:
            p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
        p.add_argument("--log", help="also write the log to this file")
        p.set_defaults(func=func)
        return p

    step("check-params", cmd_check_params, "validate a parameter file and exit")
    p = step("generate", cmd_generate, "write the addition problems as <split>.parquet")
    p.add_argument("--out", default="data", help="output directory")
    for name, func, help in [("train", cmd_train, "train one Coconut curriculum stage"),
                             ("evaluate", cmd_evaluate, "answer accuracy of one stage's checkpoint")]:
        p = step(name, func, help)
        p.add_argument("--stage", type=int, required=True, help="curriculum stage (0 = full text chain of thought)")
        p.add_argument("--data", default="data", help="directory of <split>.parquet")
        p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    train = sub.choices["train"]
    train.add_argument("--init", help="checkpoint to start from (the previous stage's; not for stage 0)")
    train.add_argument("--out", required=True, help="checkpoint directory to write")
    train.add_argument("--live", required=True, help="dvclive directory for the training curves")
    ev = sub.choices["evaluate"]
    ev.add_argument("--checkpoint", required=True, help="checkpoint directory")
    ev.add_argument("--metrics", required=True, help="metrics JSON to write")
    ev.add_argument("--predictions", required=True, help="per-problem predictions parquet to write")
    p = step("collect", cmd_collect, "cache the activations at every latent thought of one split")
    p.add_argument("--stage", type=int, required=True, help="curriculum stage (1..num_stages)")
    p.add_argument("--split", required=True, choices=["train", "val", "test", "ood"])
    p.add_argument("--data", default="data", help="directory of <split>.parquet")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p = step("probe", cmd_probe, "linear probes over one stage's activation caches")
    p.add_argument("--stage", type=int, required=True)
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", required=True, help=f"{split} activation cache directory")
    p.add_argument("--table", required=True, help="CSV of probe results to write")
    p.add_argument("--heatmap", required=True, help="PNG heatmap to write")
    p.add_argument("--metrics", required=True, help="JSON summary (best probe per label) to write")
    p = step("train-oracle", cmd_train_oracle, "train the separate oracle or the self-oracle of one stage")
    p.add_argument("--kind", required=True, choices=["separate", "self"])
    p.add_argument("--stage", type=int, required=True, help="latent stage whose activations are read")
    p.add_argument("--checkpoint", required=True, help="that stage's Coconut checkpoint")
    p.add_argument("--base", help="separate oracle's base model: a checkpoint directory or Hugging Face id")
    p.add_argument("--train", required=True, help="train activation cache")
    p.add_argument("--val", required=True, help="val activation cache")
    p.add_argument("--data", default="data", help="directory of <split>.parquet (the self-oracle rehearses train)")
    p.add_argument("--out", required=True, help="oracle directory to write")
    p.add_argument("--live", required=True, help="dvclive directory for the training curves")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p = step("evaluate-oracle", cmd_evaluate_oracle, "score both oracles of one stage next to trivial baselines")
    p.add_argument("--stage", type=int, required=True)
    p.add_argument("--checkpoint", required=True, help="the stage's Coconut checkpoint (answer accuracy before)")
    p.add_argument("--separate", required=True, help="separate oracle directory")
    p.add_argument("--self", dest="self_oracle", required=True, help="self-oracle directory")
    p.add_argument("--train", required=True, help="train activation cache (majority baselines)")
    p.add_argument("--test", required=True, help="test activation cache (scored items)")
    p.add_argument("--data", default="data", help="directory of <split>.parquet")
    p.add_argument("--table", required=True, help="CSV: metrics per oracle, condition, task and thought")
    p.add_argument("--metrics", required=True, help="JSON summary to write")
    p.add_argument("--predictions", required=True, help="per-item answers parquet to write")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p = step("ask", cmd_ask, "solve a new problem and ask the oracle what each latent thought computed",
             params=False)
    p.add_argument("problem", help='a sum such as "347 + 285"')
    p.add_argument("--checkpoint", default="models/stage-3", help="Coconut checkpoint (default: models/stage-3)")
    p.add_argument("--oracle", default="models/oracle/self/stage-3", help="oracle directory (default: the self-oracle)")
    p.add_argument("--task", default="step", choices=["step", "digit", "carry"], help="question asked per thought")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N")
    p = step("report", cmd_report, "results/report.md and its plots from the pipeline's outputs", params=False)
    for name, help in [("eval", "evaluation metrics JSON per stage"), ("probes", "probe summary JSON per stage"),
                       ("heatmaps", "probe heatmap PNG per stage"), ("oracle-tables", "oracle CSV per stage"),
                       ("oracle-metrics", "oracle JSON per stage"), ("train", "dvclive directories")]:
        p.add_argument(f"--{name}", nargs="*", default=[], help=help)
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--plots", required=True, help="directory for the report's PNG plots")
    p = step("dvc-yaml", cmd_dvc_yaml, "write dvc.yaml for the stages in the parameter file")
    p.add_argument("--config", default="config.yaml", help="wiring file with the paths (default: config.yaml)")
    p.add_argument("--out", default="dvc.yaml", help="where to write (default: dvc.yaml)")
    p = step("pull", cmd_pull, "dvc pull, check the outputs are current, record them for Snakemake", params=False)
    p.add_argument("--remote", help="DVC remote to pull from (default: the default remote)")
    p.add_argument("--no-fetch", action="store_true", help="`dvc checkout` from the local cache instead of pulling")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    try:
        args.func(args)
    except InputError as exc:
        print(f"cocoracle {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        if args.log:  # keep the traceback in the declared log file too
            logging.getLogger("cocoracle").exception("cocoracle %s failed", args.command)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

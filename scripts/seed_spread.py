"""The default's headline figures over training seeds: each run's value, their mean and spread, beside the mean
half-width of one run's 95 % interval (what a single seed's interval claims, against what the seeds show).

    dvc exp run --queue -n seed-1 -S model.seed=1 -S train.seed=1 -S oracle.seed=1   # and seed-2
    dvc queue start -j 1 && dvc queue status                   # after `dvc repro` made seed 0 in the workspace
    dvc exp show --json > experiments.json
    python scripts/seed_spread.py experiments.json workspace seed-1 seed-2 [--stage 3] [--repo .]
    python scripts/seed_spread.py --runs seed-0=RUN_DIR seed-1=RUN_DIR ...   # finished Snakemake runs instead

Figures at the all-latent stage: free-generation answer accuracy (val, test), each oracle's exact match per task
over all thoughts and per thought (test), the val-chosen thought probe per label and thought (test), and the
linear-probe product and the joint probe of the step text per thought and over all thoughts (test).
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compare_runs import _table

from cocoracle.stats import wilson

Metrics = dict[str, Any]  # metrics file path relative to the run -> its contents
TASKS = ("step", "digit", "carry", "operands")
ORACLES = ("self", "separate")


def experiment_revs(show: list[dict[str, Any]]) -> dict[str, str | None]:
    """{experiment name ('workspace' for the workspace row): its git revision (None: the workspace)} from
    `dvc exp show --json`."""
    out: dict[str, str | None] = {}
    for row in show:
        out["workspace" if row["rev"] == "workspace" else row["name"] or row["rev"]] = (
            None if row["rev"] == "workspace" else row["rev"])
        for experiment in row.get("experiments") or []:
            for rev in experiment["revs"]:
                out[rev["name"] or rev["rev"]] = rev["rev"]
    return out


def revision_metrics(repo: Path, rev: str | None, stage: int) -> Metrics:
    """The stage's results files at a revision of the DVC repository `repo` (outputs, read from DVC's cache: `dvc
    exp show` holds the headline figures only); a file the revision lacks is left out."""
    import dvc.api
    from dvc.exceptions import DvcException

    out: Metrics = {}
    for kind in ("eval", "oracle", "probes"):
        path = f"results/{kind}/stage-{stage}.json"
        try:
            out[path] = json.loads(dvc.api.read(path, repo=str(repo), rev=rev))
        except (DvcException, FileNotFoundError):
            continue
    return out


def directory_metrics(run: Path) -> Metrics:
    """The metrics files of a finished run directory."""
    return {str(p.relative_to(run)): json.loads(p.read_text())
            for kind in ("eval", "oracle", "probes") for p in sorted((run / "results" / kind).glob("stage-*.json"))}


def figures(metrics: Metrics, stage: int) -> Iterator[tuple[str, float, float | None, float | None]]:
    """(figure, value, interval low, interval high) of one run, in report order (a step not run gives none)."""
    evaluation = metrics.get(f"results/eval/stage-{stage}.json", {})
    for split in ("val", "test"):
        if split in evaluation:
            n, accuracy = evaluation[split]["n"], evaluation[split]["accuracy"]
            yield (f"answer accuracy, {split}", accuracy, *wilson(round(accuracy * n), n))
    oracle = metrics.get(f"results/oracle/stage-{stage}.json")
    if oracle:
        yield "self-oracle kept val exact match", oracle["self"]["selected_val_exact_match"], None, None
        for kind in ORACLES:
            for task in TASKS:
                by_thought = oracle[kind].get("by_thought", {}).get(task, {})
                cells = {"all thoughts": oracle[kind][task], **{f"thought {t}": c for t, c in by_thought.items()}}
                for where, cell in cells.items():
                    yield (f"{kind} oracle {task} EM, {where}", cell["exact_match"], cell["exact_match_low"],
                           cell["exact_match_high"])
    probes = metrics.get(f"results/probes/stage-{stage}.json", {"by_thought": {}})
    for label, by_thought in probes["by_thought"].items():
        for thought, probe in by_thought.items():
            yield f"probe {label}, thought {thought}", probe["accuracy"], probe["low"], probe["high"]
    for reader, name in (("linear_product", "linear-probe product"), ("joint_probe", "joint probe")):
        for where, cell in probes.get(reader, {}).get("step", {}).items():
            yield f"{name}, step text, {'all thoughts' if where == 'all' else 'thought ' + where}", \
                cell["accuracy"], cell["low"], cell["high"]


def spread_table(runs: dict[str, Metrics], stage: int) -> str:
    """Markdown: per figure, every run's value, mean, standard deviation, range and mean interval half-width."""
    per_run = {name: {f: (v, low, high) for f, v, low, high in figures(m, stage)} for name, m in runs.items()}
    names = list(per_run)
    rows = []
    for figure in per_run[names[0]]:
        cells = [per_run[name].get(figure) for name in names]
        values = [c[0] for c in cells if c is not None]
        halves = [(c[2] - c[1]) / 2 for c in cells if c is not None and c[1] is not None]
        rows.append([figure, *(f"{c[0]:.1%}" if c else "–" for c in cells), f"{statistics.mean(values):.1%}",
                     f"{statistics.stdev(values):.1%}" if len(values) > 1 else "–",
                     f"{min(values):.1%}–{max(values):.1%}",
                     f"±{statistics.mean(halves):.1%}" if halves else "–"])
    return _table(["figure", *names, "mean", "sd", "range", "one run's 95 % interval"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("show", nargs="?", help="the output of `dvc exp show --json`")
    parser.add_argument("names", nargs="*", help="experiments to compare (default: every one with metrics)")
    parser.add_argument("--runs", nargs="+", default=[], help="NAME=RUN_DIR of finished runs, instead of DVC's")
    parser.add_argument("--stage", type=int, default=3, help="the all-latent stage (default 3)")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="the DVC repository of the experiments (default: the current directory)")
    args = parser.parse_args()
    if args.runs:
        runs = {name: directory_metrics(Path(path)) for name, path in (item.split("=", 1) for item in args.runs)}
    else:
        revs = experiment_revs(json.loads(Path(args.show).read_text()))
        missing = [name for name in args.names if name not in revs]
        if missing:
            parser.error(f"no experiment named {', '.join(missing)} in {args.show} (has {', '.join(revs)})")
        found = {name: revision_metrics(args.repo, revs[name], args.stage) for name in args.names or revs}
        runs = {name: metrics for name, metrics in found.items() if metrics or args.names}
    print(spread_table(runs, args.stage))


if __name__ == "__main__":
    main()

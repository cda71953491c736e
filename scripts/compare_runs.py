"""Markdown tables that put finished runs side by side, read from their metrics files only (docs/findings.md).

    python scripts/compare_runs.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--stage K]

First what the choice between variants may use (val: answer accuracy, the oracles' kept val exact match, the
thought probes' val accuracy), then the test figures, each with its 95 % interval and its baseline.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from cocoracle.stats import format_interval, wilson


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _accuracy(split: dict[str, Any]) -> str:
    low, high = wilson(round(split["accuracy"] * split["n"]), split["n"])
    return format_interval(split["accuracy"], low, high)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines) + "\n"


def accuracy_rows(runs: dict[str, Path], split: str) -> str:
    """Free-generation answer accuracy per stage and run on one split (cut-off generations in brackets)."""
    stages = sorted(int(p.stem.split("-")[1]) for p in next(iter(runs.values())).glob("results/eval/stage-*.json"))
    rows = []
    for stage in stages:
        cells: list[Any] = [stage]
        for run in runs.values():
            data = _json(run / f"results/eval/stage-{stage}.json")[split]
            cells.append(f"{_accuracy(data)} ({data.get('truncated', 0)} cut off)")
        rows.append(cells)
    return _table(["stage", *runs], rows)


def validation_rows(runs: dict[str, Path], stage: int) -> str:
    """What a choice may use, all on val, at `stage`."""
    rows = []
    for name, run in runs.items():
        val = _json(run / f"results/eval/stage-{stage}.json")["val"]
        oracle = _json(run / f"results/oracle/stage-{stage}.json")
        probes = _json(run / f"results/probes/stage-{stage}.json")["by_thought"]
        step_fields = [p["val_accuracy"] for label in ("a_digit", "b_digit", "carry_in")
                       for p in probes[label].values()]
        rows.append([name, _accuracy(val), f"{oracle['self']['selected_val_exact_match']:.1%}",
                     f"{oracle['separate']['selected_val_exact_match']:.1%}",
                     f"{sum(step_fields) / len(step_fields):.1%}"])
    return _table(["run", "answer accuracy (val)", "self-oracle EM (val, kept step)",
                   "separate oracle EM (val, kept step)", "mean probe accuracy of a/b digit and carry in (val)"], rows)


def oracle_rows(runs: dict[str, Path], stage: int, task: str) -> str:
    """Test exact match of `task` per thought and over all: each oracle, the best baseline, the linear-probe
    product and the joint probe."""
    rows = []
    for name, run in runs.items():
        table = pd.read_csv(run / f"results/oracle/stage-{stage}.csv", dtype={"thought": str})
        probes = _json(run / f"results/probes/stage-{stage}.json")
        readers = [probes.get(name, {}).get(task, {}) for name in ("linear_product", "joint_probe")]
        rows_of_task = table[table["task"] == task]
        for thought, cell in rows_of_task.groupby("thought", sort=False):
            line: list[Any] = [name, thought]
            for kind in ("self", "separate"):
                own = cell[cell["oracle"] == kind].set_index("condition")
                row = own.loc["oracle"]
                best = own.loc[row["exact_match_best_baseline"], "exact_match"]
                line.append(f"{format_interval(row['exact_match'], row['exact_match_low'], row['exact_match_high'])}"
                            f" / {best:.1%} ({row['exact_match_best_baseline']})")
            for reader in readers:
                cell = reader.get(thought)
                line.append(format_interval(cell["accuracy"], cell["low"], cell["high"]) if cell else "–")
            rows.append(line)
    return _table(["run", "thought", "self-oracle EM / best baseline", "separate oracle EM / best baseline",
                   "linear-probe product", "joint probe"], rows)


def readable_rows(runs: dict[str, Path], stage: int) -> str:
    """Per run, step and label: the first position readable on val, with its test accuracy."""
    rows = []
    for name, run in runs.items():
        readable = _json(run / f"results/probes/stage-{stage}.json")["readable"]
        for step in sorted({int(s) for cells in readable.values() for s in cells}):
            line: list[Any] = [name, step]
            for cells in readable.values():
                probe = cells.get(str(step))
                line.append(f"{probe['position']} ({probe['accuracy']:.0%})" if probe else "nowhere")
            rows.append(line)
    labels = list(_json(next(iter(runs.values())) / f"results/probes/stage-{stage}.json")["readable"])
    return _table(["run", "step", *labels], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--stage", type=int, default=3, help="the all-latent stage (default 3)")
    args = parser.parse_args()
    runs = {name: Path(path) for name, path in (item.split("=", 1) for item in args.runs)}
    print("## Chosen on: val\n\n" + validation_rows(runs, args.stage))
    print("## Answer accuracy, val\n\n" + accuracy_rows(runs, "val"))
    print("## Answer accuracy, test\n\n" + accuracy_rows(runs, "test"))
    print("## Answer accuracy, OOD (4-digit)\n\n" + accuracy_rows(runs, "ood"))
    for task in ("step", "digit", "carry", "operands"):
        print(f"## Oracle exact match, task {task}, stage {args.stage}, test\n\n" + oracle_rows(runs, args.stage, task))
    print(f"## First position readable (val), stage {args.stage}, test accuracy\n\n" + readable_rows(runs, args.stage))


if __name__ == "__main__":
    main()

"""The headline figures of each step, the few numbers DVC shows as its metrics (`dvc exp show`, `metrics diff`).

A step's full results stay in their own file (results/eval/stage-K.json and the like: every figure, interval
and count, and the output's provenance), an ordinary output; beside it, `stage-K-headline.json` holds a handful
of scalars, and that file is what dvc.yaml declares as metrics. DVC names a metric column by its key alone
when no other metrics file has that key (else by `path:key`), so every headline key starts with what made it
and its stage, e.g. `eval.stage-3.test`: each column is short and says what it is. dvclive's summary
(metrics.json of a training run's live directory) is written the same way (`training`).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from cocoracle.atomic import write_text

SUFFIX = "-headline.json"
ORACLE_TASKS = ("step",)  # the oracle tasks whose exact match is a headline (the others: the results file)


def path_for(results: str | Path) -> Path:
    """The headline file beside a step's results file: stage-K.json -> stage-K-headline.json."""
    results = Path(results)
    return results.with_name(results.stem + SUFFIX)


def results_for(headline: str | Path) -> Path | None:
    """The results file a headline file was made from (None for any other file)."""
    headline = Path(headline)
    if not headline.name.endswith(SUFFIX):
        return None
    return headline.with_name(headline.name[:-len(SUFFIX)] + ".json")


def write(results: str | Path, headline: dict[str, Any]) -> None:
    """Write the headline figures beside the results file `results` (atomically)."""
    write_text(path_for(results), json.dumps(headline, indent=2) + "\n")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def evaluation(metrics: dict[str, Any]) -> dict[str, Any]:
    """`evaluate`: free-generation answer accuracy on each split, and teacher-forced on the held-out split (test
    where it was scored, else dev)."""
    splits = {split: block for split, block in metrics.items() if isinstance(block, dict) and "accuracy" in block}
    figures = {split: block["accuracy"] for split, block in splits.items()}
    held_out = next((split for split in ("test", "dev") if split in splits), None)
    if held_out:
        figures[f"{held_out}_tf"] = splits[held_out]["teacher_forced"]
    return {"eval": {f"stage-{metrics['stage']}": figures}}


def probes(summary: dict[str, Any]) -> dict[str, Any]:
    """`probe`: the mean test accuracy of the thought probes chosen on val (one per label and thought), and the
    linear-probe product of the step text over all thoughts (the joint probe's stays in the results file: the
    default's metrics hold at most 40 columns)."""
    chosen = [probe["accuracy"] for by_thought in summary.get("by_thought", {}).values()
              for probe in by_thought.values()]
    figures: dict[str, float] = {}
    if chosen:
        figures["thought_probes"] = statistics.fmean(chosen)
    product = summary.get("linear_product", {}).get("step", {}).get("all")
    if product:
        figures["step_linear_product"] = product["accuracy"]
    return {"probes": {f"stage-{summary['stage']}": figures}}


def oracles(summary: dict[str, Any]) -> dict[str, Any]:
    """`evaluate-oracle`: each oracle's exact match over all thoughts on the headline tasks (test)."""
    figures = {kind: {task: summary[kind][task]["exact_match"] for task in ORACLE_TASKS if task in summary[kind]}
               for kind in ("self", "separate") if isinstance(summary.get(kind), dict)}
    return {"oracle": {f"stage-{summary['stage']}": figures}}


def training(name: tuple[str, ...], summary: dict[str, Any]) -> dict[str, Any]:
    """A training run's dvclive summary as its headline: the last validation figure (`val/...`), under `name`
    (e.g. ('train', 'stage-2') or ('oracle_train', 'stage-1', 'self')); the loss and learning-rate curves are
    the run's plots."""
    figures: dict[str, Any] = {f"val_{key}": number for key, value in (summary.get("val") or {}).items()
                               if (number := _number(value)) is not None}
    for key in reversed(name):
        figures = {key: figures}
    return figures

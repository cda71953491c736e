"""Oracle evaluation on a stage's test cache: every oracle next to trivial baselines scored on the same items.

Conditions: the real activation (`oracle`), an activation from a different problem at the same thought
position (`shuffled`), a random vector of the same norm (`random`), no injection (`no_injection`), the
most common training target (`majority`) and the most common one per thought position
(`majority_per_position`). Per item, every condition: every metric of `metrics.METRICS`. Each distinct
(prompt, injected vector) is decoded once: without injection only the prompt differs between items, and a
shuffled item whose question template matches its source item's asks what the `oracle` condition asked.

The table has one row per (oracle, condition, task, thought), thought 'all' pooling the positions: each
metric's mean and 95 % interval (`{metric}_low`, `{metric}_high`). `interval` says which: `wilson` where each
problem gives one item of the cell (a single thought position): Wilson for the exact matches, a bootstrap over
problems for the F1 means; `cluster bootstrap` where problems give several (thought 'all'): every metric's
interval is a percentile bootstrap resampling whole problems. The oracle's rows also hold, per metric, the best
baseline on that metric (`{metric}_best_baseline`; ties: the earlier in CONDITIONS) and oracle − it on the
same items (`{metric}_diff`, with a paired bootstrap interval over problems `{metric}_diff_low`,
`{metric}_diff_high`). The best baseline is picked on the test items themselves, which favours the baseline.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cocoracle.atomic import atomic_path, write_text
from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import NO_TOKEN_LIMIT, Codec
from cocoracle.config import ORACLE_KINDS, InputError, run_seed
from cocoracle.data import load_split
from cocoracle.evaluate import predict
from cocoracle.headline import oracles as headline
from cocoracle.headline import write as write_headline
from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.oracle.data import OracleCodec, build_items, item_vectors
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import EXACT_METRICS, METRICS, score
from cocoracle.oracle.train import answer_prompts, load_oracle, read_spec, read_validation
from cocoracle.precision import autocast, precision_of
from cocoracle.provenance import describe
from cocoracle.stats import bootstrap, interval_kind, paired_difference, proportion

CONDITIONS = ["oracle", "shuffled", "random", "no_injection", "majority", "majority_per_position"]
BASELINES = CONDITIONS[1:]
KEYS = ["oracle", "condition", "task", "thought"]
INTERVALS = [f"{m}_{end}" for m in METRICS for end in ("low", "high")]
DIFFERENCES = [f"{m}_{part}" for m in METRICS for part in ("diff", "diff_low", "diff_high")]
BEST = [f"{m}_best_baseline" for m in METRICS]
COLUMNS = ["stage", *KEYS, "n", *METRICS, *INTERVALS, "interval", *BEST, *DIFFERENCES]

log = logging.getLogger(__name__)


def shuffled_rows(items: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """For each item, the index of an item of the same task and thought position but another problem."""
    source = np.arange(len(items))
    for group in items.groupby(["task", "thought"]).groups.values():
        order = rng.permutation(np.asarray(group))
        if len(order) > 1:  # each problem occurs once per group, so a cyclic shift changes every problem
            source[order] = np.roll(order, 1)
    return source


def random_like(vectors: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian directions with each row's norm."""
    noise = torch.from_numpy(rng.standard_normal(vectors.shape).astype(np.float32))
    return noise / noise.norm(dim=-1, keepdim=True) * vectors.norm(dim=-1, keepdim=True)


def condition_inputs(caches: dict[str, ActivationCache], oracle: dict[str, Any], source_layer: int, stage: int,
                     seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[list[Any], torch.Tensor | None]]]:
    """The train and test items and, per condition that asks the model, each test item's injected vectors and
    their sources (a cache row, a random draw, or None for no injection): one seeded RNG's draws, in this order."""
    rng = np.random.default_rng([seed, stage, 99])
    train_items = build_items(caches["train"], oracle["tasks"], source_layer, rng)
    items = build_items(caches["test"], oracle["tasks"], source_layer, rng)
    vectors = item_vectors(caches["test"], items, source_layer)
    rows, shuffled = items["row"].to_numpy(), shuffled_rows(items, rng)
    return train_items, items, {
        "oracle": (rows.tolist(), vectors), "shuffled": (rows[shuffled].tolist(), vectors[shuffled]),
        "random": ([("random", i) for i in range(len(items))], random_like(vectors, rng)),
        "no_injection": ([None] * len(items), None)}


def majority_answers(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, list[str]]:
    """The most common training target per task, and per (task, thought), for each test item."""
    overall = train.groupby("task")["target"].agg(lambda t: t.value_counts().index[0])
    per_position = train.groupby(["task", "thought"])["target"].agg(lambda t: t.value_counts().index[0])
    return {"majority": [overall.get(t, "") for t in test["task"]],
            "majority_per_position": [per_position.get((t, h), overall.get(t, ""))
                                      for t, h in zip(test["task"], test["thought"], strict=True)]}


def with_all_thoughts(scored: pd.DataFrame) -> pd.DataFrame:
    """Scored items with thought as a string, followed by all of them again with thought 'all'."""
    per_thought = scored.assign(thought=scored["thought"].astype(str))
    return pd.concat([per_thought, per_thought.assign(thought="all")], ignore_index=True)


def intervals(cell: pd.DataFrame) -> pd.Series:
    """95 % intervals of one cell's metrics and their kind (`interval`): for exact matches Wilson where each problem
    gives one item, else a bootstrap over problems (stats.proportion); for the F1 means a bootstrap over problems."""
    problems = cell["problem_id"].to_numpy()
    bounds = {m: proportion(cell[m].to_numpy(), problems)[:2] if m in EXACT_METRICS
              else bootstrap(cell[m].to_numpy(), problems) for m in METRICS}
    return pd.Series({**{f"{m}_{end}": value for m, pair in bounds.items()
                         for end, value in zip(("low", "high"), pair, strict=True)},
                      "interval": interval_kind(problems)})


def differences(cell: pd.DataFrame) -> pd.Series:
    """Per metric, on one (oracle, task, thought) cell: the best baseline and oracle − it over the same items."""
    wide = cell.pivot(index="row", columns="condition", values=list(METRICS))
    problems = cell[cell["condition"] == "oracle"].set_index("row")["problem_id"].reindex(wide.index).to_numpy()
    out = {}
    for m in METRICS:
        best = wide[m][BASELINES].mean().idxmax()
        diff, low, high = paired_difference(wide[m]["oracle"].to_numpy(), wide[m][best].to_numpy(), problems)
        out |= {f"{m}_best_baseline": best, f"{m}_diff": diff, f"{m}_diff_low": low, f"{m}_diff_high": high}
    return pd.Series(out)


def aggregate(scored: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Per (oracle, condition, task, thought), plus thought 'all': n, metric means and intervals; on the
    oracle's rows, per metric the best baseline and the paired difference (see the module docstring)."""
    cells = with_all_thoughts(scored)
    grouped = cells.groupby(KEYS, sort=False)
    table = grouped[list(METRICS)].mean().join(grouped.size().rename("n"))
    table = table.join(grouped[[*METRICS, "problem_id"]].apply(intervals)).reset_index()
    paired = cells.groupby(["oracle", "task", "thought"], sort=False)[["row", "problem_id", "condition", *METRICS]]
    diffs = paired.apply(differences).reset_index().assign(condition="oracle")
    return table.merge(diffs, how="left", on=KEYS).assign(stage=stage)[COLUMNS]


def task_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """One task's rows (all thoughts, or one): the oracle's n, metrics, intervals and differences, and the best
    baseline by exact match with its interval."""
    mine = rows[rows["condition"] == "oracle"].iloc[0]
    baselines = rows[rows["condition"] != "oracle"]
    best = baselines.loc[baselines["exact_match"].idxmax()]
    return {"n": int(mine["n"]), **{c: float(mine[c]) for c in [*METRICS, *INTERVALS, *DIFFERENCES]},
            "interval": mine["interval"], "best_baseline": best["condition"],
            **{f"best_baseline_{c}": float(best[c]) for c in ("exact_match", "exact_match_low", "exact_match_high")}}


def thought_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """One task's rows at one thought position: the oracle's exact match with its interval and n, and the best
    baseline by exact match with its value (task_summary's figures on exact match only)."""
    full = task_summary(rows)
    return {key: full[key] for key in ("n", "exact_match", "exact_match_low", "exact_match_high", "interval",
                                       "best_baseline", "best_baseline_exact_match")}


def summary(table: pd.DataFrame, stage: int, accuracy: dict[str, float],
            validation: dict[str, dict[str, Any]], sources: dict[str, int]) -> dict[str, Any]:
    """Per oracle: the training step kept and its val exact match, the cache tensor it reads (`source_tensor`),
    per task its summary over all positions, and (`by_thought`) per task and thought position its exact match
    beside the best baseline's."""
    out: dict[str, Any] = {"stage": stage, "self_answer_accuracy": accuracy}
    for kind, rows in table.groupby("oracle", sort=False):
        kept = {key: validation[kind][key] for key in ("selected_step", "selected_val_exact_match")}
        kept["source_tensor"] = f"layer_{sources[kind]}"
        overall, per_thought = rows[rows["thought"] == "all"], rows[rows["thought"] != "all"]
        tasks = {task: task_summary(task_rows) for task, task_rows in overall.groupby("task", sort=False)}
        by_thought = {task: {thought: thought_summary(cell)
                             for thought, cell in task_rows.groupby("thought", sort=False)}
                      for task, task_rows in per_thought.groupby("task", sort=False)}
        out[kind] = {**kept, **tasks, "by_thought": by_thought}
    return out


def answer_conditions(kind: str, path: str | Path, caches: dict[str, ActivationCache], params: dict[str, Any],
                      stage: int, device: torch.device) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The test items and every condition's answers to them, for one oracle."""
    oracle = params["oracle"]
    model, tokenizer, spec = load_oracle(path, device)
    if spec.stage != stage:
        raise InputError(f"{path}: an oracle for stage {spec.stage}, not {stage}")
    train_items, items, inputs = condition_inputs(caches, oracle, spec.source_layer, stage, run_seed(params))
    codec, injector = OracleCodec(tokenizer), Injector(model, spec.inject_layers, spec.alpha)
    prompts = items["prompt"].tolist()
    decoded: dict[tuple[str, Any], str] = {}  # (prompt, the injected vector's source) -> answer, across conditions

    def run(condition: str, sources: list[Any], vectors: torch.Tensor | None) -> list[str]:
        """Every item's answer; each distinct (prompt, vector source) is decoded once, earlier conditions' reused."""
        keys = list(zip(prompts, sources, strict=True))
        todo: dict[tuple[str, Any], int] = {}  # each key not decoded yet -> its first item
        for i, key in enumerate(keys):
            if key not in decoded:
                todo.setdefault(key, i)
        first = list(todo.values())
        start = time.perf_counter()
        answers = answer_prompts(model, injector, codec, [prompts[i] for i in first],
                                 None if vectors is None else vectors[first], oracle["max_new_tokens"],
                                 oracle["batch_size"])
        decoded.update(zip(todo, answers, strict=True))
        seconds = time.perf_counter() - start
        log.info("%s oracle stage %d, %s: %d items, %d decoded in %.1f s (%.0f items/s)", kind, stage, condition,
                 len(keys), len(first), seconds, len(keys) / max(seconds, 1e-9))
        return [decoded[key] for key in keys]
    answers = {condition: run(condition, sources, vectors) for condition, (sources, vectors) in inputs.items()}
    answers.update(majority_answers(train_items, items))
    injector.remove()
    return items, answers


def score_oracle(kind: str, path: str | Path, caches: dict[str, ActivationCache], params: dict[str, Any],
                 stage: int, device: torch.device) -> pd.DataFrame:
    """Every condition's answer and scores on the test items, for one oracle."""
    items, answers = answer_conditions(kind, path, caches, params, stage, device)
    frames = []
    for condition in CONDITIONS:
        scores = pd.DataFrame([score(a, t) for a, t in zip(answers[condition], items["target"], strict=True)])
        frames.append(items.assign(oracle=kind, condition=condition, predicted=answers[condition], **scores))
    return pd.concat(frames, ignore_index=True)


def answer_accuracy(model, tokenizer, rows: list[dict[str, Any]], stage: int, coconut: dict[str, Any],
                    batch_size: int) -> float:
    results = predict(model, Codec(tokenizer), rows, stage, coconut, batch_size, NO_TOKEN_LIMIT, desc="answer accuracy")
    return sum(r["correct"] for r in results) / max(len(results), 1)


def self_answer_accuracy(checkpoint: str | Path, self_oracle: str | Path, data_dir: str | Path, split: str,
                         stage: int, batch_size: int, device: torch.device) -> dict[str, float]:
    """The checkpoint's answer accuracy on a split at its stage before and after self-oracle fine-tuning."""
    trained = checkpoint_params(checkpoint)
    rows = load_split(data_dir, split)
    before, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    after, after_tokenizer, _ = load_oracle(self_oracle, device)
    return {"before": answer_accuracy(before, tokenizer, rows, stage, trained["coconut"], batch_size),
            "after": answer_accuracy(after, after_tokenizer, rows, stage, trained["coconut"], batch_size)}


def evaluate_oracles(params: dict[str, Any], stage: int, checkpoint: str | Path, oracle_dirs: dict[str, str | Path],
                     cache_dirs: dict[str, str | Path], data_dir: str | Path, table_path: str | Path,
                     metrics_path: str | Path, predictions_path: str | Path, device: torch.device) -> pd.DataFrame:
    """Score both oracles and all baselines; write the table (CSV), summary (JSON) and per-item predictions."""
    caches = {split: ActivationCache(path) for split, path in cache_dirs.items()}
    held_out = caches["test"].manifest["split"]  # the split scored: dev, or test for a study's final figures
    with autocast(precision_of(checkpoint_params(checkpoint)["model"]), device):
        scored = pd.concat([score_oracle(kind, oracle_dirs[kind], caches, params, stage, device)
                            for kind in ORACLE_KINDS], ignore_index=True)
        accuracy = self_answer_accuracy(checkpoint, oracle_dirs["self"], data_dir, held_out, stage,
                                        params["oracle"]["batch_size"], device)
    table = aggregate(scored, stage)
    validation = {kind: read_validation(oracle_dirs[kind]) for kind in ORACLE_KINDS}
    sources = {kind: read_spec(oracle_dirs[kind]).source_layer for kind in ORACLE_KINDS}
    with atomic_path(predictions_path) as tmp:
        scored.to_parquet(tmp, index=False)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    inputs = [checkpoint, *oracle_dirs.values(), *cache_dirs.values(), Path(data_dir) / f"{held_out}.parquet"]
    record = describe({"oracle": params["oracle"], "stage": stage}, inputs, seed=run_seed(params))
    results = {**summary(table, stage, accuracy, validation, sources), "held_out": held_out}
    write_text(metrics_path, json.dumps({**results, "provenance": record}, indent=2) + "\n")
    write_headline(metrics_path, headline(results))
    return table

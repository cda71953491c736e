"""Oracle evaluation on a stage's test cache: every oracle next to trivial baselines scored on the same items.

Conditions: the real activation (`oracle`), an activation from a different problem at the same thought
position (`shuffled`), a random vector of the same norm (`random`), no injection (`no_injection`), the
most common training target (`majority`) and the most common one per thought position
(`majority_per_position`). Per item: exact match, multiset token F1, number F1.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cocoracle.atomic import atomic_path, write_text
from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import NO_TOKEN_LIMIT, Codec
from cocoracle.config import ORACLE_KINDS, InputError
from cocoracle.data import load_split
from cocoracle.evaluate import predict
from cocoracle.model import checkpoint_params, load_checkpoint, pick_dtype
from cocoracle.oracle.data import OracleCodec, build_items, item_vectors
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import score
from cocoracle.oracle.train import answer_prompts, load_oracle
from cocoracle.precision import autocast, precision_of

METRICS = ["exact_match", "token_f1", "number_f1"]
CONDITIONS = ["oracle", "shuffled", "random", "no_injection", "majority", "majority_per_position"]
COLUMNS = ["stage", "oracle", "condition", "task", "thought", "n", *METRICS]


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


def majority_answers(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, list[str]]:
    """The most common training target per task, and per (task, thought), for each test item."""
    overall = train.groupby("task")["target"].agg(lambda t: t.value_counts().index[0])
    per_position = train.groupby(["task", "thought"])["target"].agg(lambda t: t.value_counts().index[0])
    return {"majority": [overall.get(t, "") for t in test["task"]],
            "majority_per_position": [per_position.get((t, h), overall.get(t, ""))
                                      for t, h in zip(test["task"], test["thought"], strict=True)]}


def aggregate(scored: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Mean metrics per (oracle, condition, task, thought), plus thought == 'all'."""
    keys = ["oracle", "condition", "task"]
    per_thought = scored.assign(thought=scored["thought"].astype(str))
    both = pd.concat([per_thought, per_thought.assign(thought="all")])
    table = both.groupby(keys + ["thought"], sort=False)[METRICS].agg("mean").reset_index()
    table["n"] = both.groupby(keys + ["thought"], sort=False).size().to_numpy()
    return table.assign(stage=stage)[COLUMNS]


def summary(table: pd.DataFrame, stage: int, accuracy: dict[str, float]) -> dict[str, Any]:
    """Per oracle and task: its metrics over all positions and the best baseline's exact match."""
    out: dict[str, Any] = {"stage": stage, "self_answer_accuracy": accuracy}
    overall = table[table["thought"] == "all"]
    for kind, rows in overall.groupby("oracle"):
        out[kind] = {}
        for task, task_rows in rows.groupby("task"):
            mine = task_rows[task_rows["condition"] == "oracle"].iloc[0]
            baselines = task_rows[task_rows["condition"] != "oracle"]
            best = baselines.loc[baselines["exact_match"].idxmax()]
            out[kind][task] = {**{m: float(mine[m]) for m in METRICS}, "best_baseline": best["condition"],
                               "best_baseline_exact_match": float(best["exact_match"])}
    return out


def score_oracle(kind: str, path: str | Path, caches: dict[str, ActivationCache], params: dict[str, Any],
                 stage: int, device: torch.device) -> pd.DataFrame:
    """Every condition's answer and scores on the test items, for one oracle."""
    oracle = params["oracle"]
    model, tokenizer, spec = load_oracle(path, device)
    if spec.stage != stage:
        raise InputError(f"{path}: an oracle for stage {spec.stage}, not {stage}")
    rng = np.random.default_rng([oracle["seed"], stage, 99])
    train_items = build_items(caches["train"], oracle["tasks"], spec.source_layer, rng)
    items = build_items(caches["test"], oracle["tasks"], spec.source_layer, rng)
    vectors = item_vectors(caches["test"], items, spec.source_layer)
    codec, injector = OracleCodec(tokenizer), Injector(model, spec.inject_layers, spec.alpha)
    prompts = items["prompt"].tolist()

    def run(vectors: torch.Tensor | None) -> list[str]:
        return answer_prompts(model, injector, codec, prompts, vectors, oracle["max_new_tokens"], oracle["batch_size"])
    answers = {"oracle": run(vectors), "shuffled": run(vectors[shuffled_rows(items, rng)]),
               "random": run(random_like(vectors, rng)), "no_injection": run(None),
               **majority_answers(train_items, items)}
    injector.remove()
    frames = []
    for condition in CONDITIONS:
        scores = pd.DataFrame([score(a, t) for a, t in zip(answers[condition], items["target"], strict=True)])
        frames.append(items.assign(oracle=kind, condition=condition, predicted=answers[condition], **scores))
    return pd.concat(frames, ignore_index=True)


def answer_accuracy(model, tokenizer, rows: list[dict[str, Any]], stage: int, coconut: dict[str, Any],
                    batch_size: int) -> float:
    results = predict(model, Codec(tokenizer), rows, stage, coconut, batch_size, NO_TOKEN_LIMIT, desc="answer accuracy")
    return sum(r["correct"] for r in results) / max(len(results), 1)


def self_answer_accuracy(checkpoint: str | Path, self_oracle: str | Path, data_dir: str | Path, stage: int,
                         batch_size: int, device: torch.device) -> dict[str, float]:
    """The checkpoint's test answer accuracy at its stage before and after self-oracle fine-tuning."""
    trained = checkpoint_params(checkpoint)
    rows = load_split(data_dir, "test")
    before, tokenizer = load_checkpoint(checkpoint, device, pick_dtype(trained["model"]["dtype"], device))
    after, after_tokenizer, _ = load_oracle(self_oracle, device)
    return {"before": answer_accuracy(before, tokenizer, rows, stage, trained["coconut"], batch_size),
            "after": answer_accuracy(after, after_tokenizer, rows, stage, trained["coconut"], batch_size)}


def evaluate_oracles(params: dict[str, Any], stage: int, checkpoint: str | Path, oracle_dirs: dict[str, str | Path],
                     cache_dirs: dict[str, str | Path], data_dir: str | Path, table_path: str | Path,
                     metrics_path: str | Path, predictions_path: str | Path, device: torch.device) -> pd.DataFrame:
    """Score both oracles and all baselines; write the table (CSV), summary (JSON) and per-item predictions."""
    caches = {split: ActivationCache(path) for split, path in cache_dirs.items()}
    with autocast(precision_of(checkpoint_params(checkpoint)["model"]), device):
        scored = pd.concat([score_oracle(kind, oracle_dirs[kind], caches, params, stage, device)
                            for kind in ORACLE_KINDS], ignore_index=True)
        accuracy = self_answer_accuracy(checkpoint, oracle_dirs["self"], data_dir, stage,
                                        params["oracle"]["batch_size"], device)
    table = aggregate(scored, stage)
    with atomic_path(predictions_path) as tmp:
        scored.to_parquet(tmp, index=False)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    write_text(metrics_path, json.dumps(summary(table, stage, accuracy), indent=2) + "\n")
    return table

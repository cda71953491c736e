"""A synthetic activation cache whose vectors do (or do not) linearly encode the step labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cocoracle.activations import INDEX_SCHEMA, THOUGHT, ShardWriter, sha256
from cocoracle.cache_reader import ActivationCache


def synthetic_cache(path: Path, n: int, encoded: bool, seed: int, d: int = 16, layer: str = "layer_0",
                    noise: float = 0.5) -> ActivationCache:
    """n problems x 2 thoughts; with `encoded`, `layer` is a noisy linear map of digit_written and carry_out."""
    rng = np.random.default_rng(seed)
    digit = rng.integers(0, 10, 2 * n)
    carry = rng.integers(0, 2, 2 * n)
    directions = np.random.default_rng(123).normal(size=(12, d))  # same encoding in every split
    signal = np.eye(10)[digit] @ directions[:10] + np.eye(2)[carry] @ directions[10:]
    x = torch.tensor((signal if encoded else 0) + rng.normal(scale=noise, size=(2 * n, d)), dtype=torch.float32)
    path.mkdir()
    writer = ShardWriter(path, 50, torch.float32)
    writer.add({THOUGHT: x, layer: x} if layer != THOUGHT else {THOUGHT: x})
    writer.close()
    index = [{"row": i, "problem_id": i // 2, "stage": 1, "thought": i % 2, "step": i % 2, "step_text": "",
              "carry_in": 0, "carry_out": int(carry[i]), "digit_written": int(digit[i]), "digit_sum": 0,
              "a_digit": 0, "b_digit": 0, "n_steps": 2, "question": "1 + 2 =", "answer": 0, "correct": True}
             for i in range(2 * n)]
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), path / "index.parquet")
    manifest = {"rows": 2 * n, "tensors": sorted({THOUGHT, layer}), "d_model": d, "shards": writer.shards,
                "index_sha256": sha256(path / "index.parquet")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return ActivationCache(path)

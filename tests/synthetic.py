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
from cocoracle.data import column_additions


def synthetic_cache(path: Path, n: int, encoded: bool, seed: int, d: int = 16, layer: str = "layer_0",
                    noise: float = 0.5, split: str = "dev") -> ActivationCache:
    """n two-digit problems, each with 2 thought rows and an `eot` row. With `encoded`, thought t's `layer` is a
    noisy linear map of digit_written and carry_out of step t (its own step) and the `eot` row of step 0's digit;
    without it every vector is noise. `split`: the split its manifest names."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(10, 100, n), rng.integers(10, 100, n)
    columns = [column_additions(int(x), int(y)) for x, y in zip(a, b, strict=True)]
    directions = np.random.default_rng(123).normal(size=(12, d))  # same encoding in every split
    rows, vectors = [], []
    for i, cols in enumerate(columns):
        problem = {"problem_id": i, "stage": 1, "n_steps": len(cols), "question": f"{a[i]} + {b[i]} =",
                   "answer": int(a[i] + b[i]), "correct": True, "a": int(a[i]), "b": int(b[i])}
        for t in range(2):
            rows.append({**problem, "thought": t, "step": t, "step_text": "", **cols[t], "position": "thought",
                         "offset": t})
            vectors.append(np.eye(10)[cols[t]["digit_written"]] @ directions[:10]
                           + np.eye(2)[cols[t]["carry_out"]] @ directions[10:])
        rows.append({**problem, "position": "eot", "offset": 0, "token": "<eot>"})
        vectors.append(np.eye(10)[cols[0]["digit_written"]] @ directions[:10])
    signal = np.array(vectors) if encoded else 0
    x = torch.tensor(signal + rng.normal(scale=noise, size=(len(rows), d)), dtype=torch.float32)
    path.mkdir()
    writer = ShardWriter(path, 50, torch.float32)
    writer.add({THOUGHT: x, layer: x} if layer != THOUGHT else {THOUGHT: x})
    writer.close()
    for i, row in enumerate(rows):
        row["row"] = i
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), path / "index.parquet")
    manifest = {"rows": len(rows), "split": split, "tensors": sorted({THOUGHT, layer}), "d_model": d,
                "shards": writer.shards,
                "index_sha256": sha256(path / "index.parquet")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return ActivationCache(path)

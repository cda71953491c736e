"""Probes beat the majority baseline only where the label is linearly encoded."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cocoracle.activations import INDEX_SCHEMA, THOUGHT, ShardWriter, sha256
from cocoracle.cache_reader import ActivationCache
from cocoracle.probes import probe_caches, run_probes

PROBES = {"seed": 0, "C_grid": [0.1, 1.0], "max_iter": 300, "labels": ["digit_written", "carry_out"]}


def synthetic_cache(path, n: int, encoded: bool, seed: int) -> ActivationCache:
    """n problems x 2 thoughts; with `encoded`, layer_0 is a noisy linear map of the labels."""
    rng = np.random.default_rng(seed)
    digit = rng.integers(0, 10, 2 * n)
    carry = rng.integers(0, 2, 2 * n)
    directions = np.random.default_rng(123).normal(size=(12, 16))  # same encoding in every split
    signal = np.eye(10)[digit] @ directions[:10] + np.eye(2)[carry] @ directions[10:]
    x = (signal if encoded else 0) + rng.normal(scale=0.5, size=(2 * n, 16))
    path.mkdir()
    writer = ShardWriter(path, 50, torch.float32)
    writer.add({THOUGHT: torch.tensor(x, dtype=torch.float32), "layer_0": torch.tensor(x, dtype=torch.float32)})
    writer.close()
    index = [{"row": i, "problem_id": i // 2, "stage": 1, "thought": i % 2, "step": i % 2, "step_text": "",
              "carry_in": 0, "carry_out": int(carry[i]), "digit_written": int(digit[i]), "digit_sum": 0,
              "a_digit": 0, "b_digit": 0, "n_steps": 2, "answer": 0, "correct": True} for i in range(2 * n)]
    pq.write_table(pa.Table.from_pylist(index, schema=INDEX_SCHEMA), path / "index.parquet")
    manifest = {"rows": 2 * n, "tensors": [THOUGHT, "layer_0"], "d_model": 16, "shards": writer.shards,
                "index_sha256": sha256(path / "index.parquet")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return ActivationCache(path)


def _caches(tmp_path, encoded: bool) -> dict[str, ActivationCache]:
    return {split: synthetic_cache(tmp_path / split, n, encoded, seed)
            for split, n, seed in [("train", 300, 0), ("val", 100, 1), ("test", 100, 2)]}


def test_probe_finds_a_linearly_encoded_label(tmp_path):
    table = probe_caches(_caches(tmp_path, encoded=True), 1, PROBES)
    assert len(table) == 2 * 2 * 2  # tensors x thoughts x labels
    assert (table["accuracy"] > table["baseline"] + 0.3).all(), table


def test_probe_does_not_beat_baseline_on_noise(tmp_path):
    table = probe_caches(_caches(tmp_path, encoded=False), 1, PROBES)
    assert (table["accuracy"] < table["baseline"] + 0.12).all(), table


def test_run_probes_writes_table_heatmap_and_summary(tmp_path):
    caches = _caches(tmp_path, encoded=True)
    out = tmp_path / "out"
    run_probes({"probes": PROBES}, 1, {s: c.path for s, c in caches.items()}, out / "t.csv", out / "h.png",
               out / "m.json")
    assert (out / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "t.csv").read_text().splitlines()[0] == "stage,tensor,thought,label,accuracy,baseline,n,C"
    summary = json.loads((out / "m.json").read_text())
    assert set(summary["best"]) == {"digit_written", "carry_out"}

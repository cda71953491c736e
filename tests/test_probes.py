"""Probes beat the majority baseline only where the label is linearly encoded."""
from __future__ import annotations

import json

import pandas as pd

from cocoracle.cache_reader import ActivationCache
from cocoracle.probes import best_by_thought, best_probes, probe_caches, run_probes
from synthetic import synthetic_cache

PROBES = {"seed": 0, "C_grid": [0.1, 1.0], "max_iter": 300, "labels": ["digit_written", "carry_out"]}


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
    header = (out / "t.csv").read_text().splitlines()[0]
    assert header == "stage,tensor,thought,label,accuracy,baseline,val_accuracy,n,C"
    summary = json.loads((out / "m.json").read_text())
    assert set(summary["best"]) == {"digit_written", "carry_out"}


def test_summary_picks_the_best_probe_on_val_not_test():
    table = pd.DataFrame({"label": ["carry_out"] * 4, "tensor": ["layer_0", "layer_1"] * 2, "thought": [0, 0, 1, 1],
                          "accuracy": [0.9, 0.7, 0.6, 0.4], "val_accuracy": [0.6, 0.8, 0.9, 0.5],
                          "baseline": [0.5] * 4, "n": [100] * 4})
    best = best_probes(table)["carry_out"]
    assert (best["tensor"], best["thought"], best["accuracy"]) == ("layer_0", 1, 0.6)
    per_thought = best_by_thought(table)["carry_out"]
    assert {t: (p["tensor"], p["accuracy"]) for t, p in per_thought.items()} == {"0": ("layer_1", 0.7),
                                                                                "1": ("layer_0", 0.6)}
    assert per_thought["0"]["low"] < 0.7 < per_thought["0"]["high"]

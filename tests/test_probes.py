"""Probes beat the majority baseline only where the label is linearly encoded."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cocoracle import headline
from cocoracle.cache_reader import ActivationCache
from cocoracle.config import InputError
from cocoracle.probes import (
    _fit_labels,
    best_by_thought,
    best_probes,
    ceilings_by_tensor,
    composed_ceiling,
    fit_probe,
    probe_caches,
    run_probes,
)
from synthetic import synthetic_cache

PROBES = {"C_grid": [0.1, 1.0], "max_iter": 300, "labels": ["digit_written", "carry_out"],
          "step_labels": ["digit_written", "carry_out"]}
OUTPUTS = ("table", "steps_table", "heatmap", "steps_heatmap", "metrics")


def _caches(tmp_path, encoded: bool) -> dict[str, ActivationCache]:
    return {split: synthetic_cache(tmp_path / split, n, encoded, seed)
            for split, n, seed in [("train", 300, 0), ("val", 100, 1), ("test", 100, 2)]}


def _outputs(tmp_path) -> dict:
    return {name: tmp_path / "out" / f"{name}.{'png' if 'heatmap' in name else 'json' if name == 'metrics' else 'csv'}"
            for name in OUTPUTS}


def _cell(steps: pd.DataFrame, position: str, step: int, label: str, tensor: str = "layer_0") -> pd.Series:
    chosen = steps[(steps["position"] == position) & (steps["step"] == step) & (steps["label"] == label)
                   & (steps["tensor"] == tensor)]
    assert len(chosen) == 1, (position, step, label)
    return chosen.iloc[0]


def test_probe_finds_a_linearly_encoded_label(tmp_path):
    table, _, _ = probe_caches(_caches(tmp_path, encoded=True), 1, PROBES)
    assert len(table) == 2 * 2 * 2  # tensors x thoughts x labels
    assert (table["accuracy"] > table["baseline"] + 0.3).all(), table


def test_probe_does_not_beat_baseline_on_noise(tmp_path):
    table, steps, _ = probe_caches(_caches(tmp_path, encoded=False), 1, PROBES)
    assert (table["accuracy"] < table["baseline"] + 0.12).all(), table
    assert (steps["accuracy"] < steps["baseline"] + 0.12).all(), steps


def test_steps_table_finds_each_step_where_it_is_encoded_and_nowhere_else(tmp_path):
    _, steps, _ = probe_caches(_caches(tmp_path, encoded=True), 1, PROBES)
    # every position (2 thoughts, eot) x step (3: a two-digit sum can carry into a third column) x label x tensor,
    # less the labels train has one class of (the third column writes its carry: digit 1, carry out 0)
    assert set(steps["position"]) == {"thought 0", "thought 1", "eot"}
    assert set(steps["step"]) == {0, 1}
    assert len(steps) == 3 * 2 * 2 * 2
    assert _cell(steps, "thought 0", 0, "digit_written")["accuracy"] > 0.8
    assert _cell(steps, "thought 1", 1, "digit_written")["accuracy"] > 0.8
    assert _cell(steps, "eot", 0, "digit_written")["accuracy"] > 0.8  # the eot rows encode step 0's digit
    off_diagonal = _cell(steps, "thought 1", 0, "digit_written")
    assert off_diagonal["accuracy"] < off_diagonal["baseline"] + 0.15
    assert _cell(steps, "eot", 1, "digit_written")["accuracy"] < 0.5


def test_run_probes_writes_tables_heatmaps_and_summary(tmp_path):
    caches = _caches(tmp_path, encoded=True)
    out = _outputs(tmp_path)
    run_probes({"probes": PROBES}, 1, {s: c.path for s, c in caches.items()}, out)
    for png in ("heatmap", "steps_heatmap"):
        assert out[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["table"].read_text().splitlines()[0] == \
        "stage,tensor,thought,label,accuracy,baseline,val_accuracy,n,C,converged"
    assert out["steps_table"].read_text().splitlines()[0] == \
        "stage,tensor,position,step,label,accuracy,baseline,val_accuracy,n,C,converged"
    summary = json.loads(out["metrics"].read_text())
    assert json.loads(headline.path_for(out["metrics"]).read_text()) == headline.probes(summary)  # DVC's metrics
    n_probes = len(out["table"].read_text().splitlines()) + len(out["steps_table"].read_text().splitlines()) - 2
    assert summary["unconverged"] == {"max_iter": 300, "probes": n_probes, "stopped": 0}
    assert set(summary["best"]) == {"digit_written", "carry_out"}
    assert summary["positions"] == ["thought 0", "thought 1", "eot"]
    readable = summary["readable"]["digit_written"]
    assert (readable["0"]["position"], readable["1"]["position"]) == ("thought 0", "thought 1")
    assert readable["0"]["low"] < readable["0"]["accuracy"] <= readable["0"]["high"]
    assert set(summary["by_step"]["digit_written"]["0"]) == {"thought 0", "thought 1", "eot"}
    ceiling = summary["ceiling"]
    assert set(ceiling) == {"digit", "carry"}  # the fields probed here (probes.labels)
    assert ceiling["digit"]["0"]["accuracy"] == summary["by_thought"]["digit_written"]["0"]["accuracy"]
    table = pd.read_csv(out["table"])
    assert list(summary["ceiling_by_tensor"]) == ["thought", "layer_0"]  # each tensor of the cache, alone
    for tensor, by_task in summary["ceiling_by_tensor"].items():
        row = table[(table.tensor == tensor) & (table.thought == 0) & (table.label == "digit_written")].iloc[0]
        assert by_task["digit"]["0"]["accuracy"] == pytest.approx(row["accuracy"], abs=1e-4)


def test_probes_stopped_by_max_iter_are_counted(tmp_path):
    caches = _caches(tmp_path, encoded=True)
    out = _outputs(tmp_path)
    table, steps = run_probes({"probes": {**PROBES, "max_iter": 1}}, 1, {s: c.path for s, c in caches.items()}, out)
    assert not table["converged"].any() and not steps["converged"].any()
    unconverged = json.loads(out["metrics"].read_text())["unconverged"]
    assert unconverged == {"max_iter": 1, "probes": len(table) + len(steps), "stopped": len(table) + len(steps)}


def test_a_cache_without_answer_pass_positions_is_refused(tmp_path):
    caches = _caches(tmp_path, encoded=True)
    caches["train"].index = caches["train"].index.drop(columns="position")
    with pytest.raises(InputError, match="without answer-pass positions"):
        probe_caches(caches, 1, PROBES)


def test_warm_started_c_path_matches_independent_fits(tmp_path):
    """Each C's fit starts from the previous solution; it converges to what a fresh sklearn fit finds."""
    caches = _caches(tmp_path, encoded=True)
    data = []
    for split in ("train", "val", "test"):
        rows = caches[split].index.query("position == 'thought' and offset == 0").sort_values("row")
        data.append((caches[split].load("layer_0", rows["row"].to_numpy()), rows["digit_written"].to_numpy(int)))
    fitted = fit_probe(*data, [1.0, 0.1], 1000)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
    fresh = {c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x_tr, y_tr)
             for c in (0.1, 1.0)}
    best = max((0.1, 1.0), key=lambda c: fresh[c].score(x_va, y_va))  # max keeps the first, the smaller C, on ties
    assert fitted["C"] == best
    assert abs(fitted["accuracy"] - fresh[best].score(x_te, y_te)) <= 0.01
    assert fitted["val_accuracy"] == pytest.approx(fresh[best].score(x_va, y_va), abs=0.01)
    assert fitted["converged"]
    assert not fit_probe(*data, [1.0, 0.1], 1)["converged"]  # one iteration stops at max_iter


def test_a_label_vector_two_labels_share_is_fitted_once(monkeypatch):
    """At a thought its own step's labels are also step labels: the unit fits that vector once, both rows get it."""
    rng = np.random.default_rng(0)
    y = {split: rng.integers(0, 3, n).astype(float) for split, n in (("train", 200), ("val", 60), ("test", 60))}
    data = {split: (rng.normal(size=(len(v), 8)) + v[:, None],
                    {("own", None, "digit_written"): v, ("step", 0, "digit_written"): v.copy(),
                     ("step", 1, "digit_written"): rng.permutation(v)}) for split, v in y.items()}
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0][1])
        return fit_probe(*args, **kwargs)
    monkeypatch.setattr("cocoracle.probes.fit_probe", counted)
    fits = dict(_fit_labels(data, PROBES))
    assert len(calls) == 2  # the own label and step 0's are one vector; step 1's differs
    own, step0, step1 = (fits[key] for key in data["train"][1])
    assert {k: v for k, v in own.items() if k != "hits"} == {k: v for k, v in step0.items() if k != "hits"}
    assert own["accuracy"] != step1["accuracy"]
    assert own["hits"].shape == (60,) and step0["hits"] is None  # the test hits are kept for the own label only


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


def test_composed_ceiling_needs_every_field_of_an_answer_right_on_the_same_item():
    """The step's text is right only where the a-digit, b-digit and carry-in probes (each chosen on val) all are."""
    rows = [{"label": label, "tensor": tensor, "thought": 0, "accuracy": 0.5, "val_accuracy": val, "baseline": 0.1,
             "n": 4} for label in ("a_digit", "b_digit", "carry_in") for tensor, val in (("layer_0", 0.9),
                                                                                         ("layer_1", 0.2))]
    hits = {("layer_0", 0, "a_digit"): np.array([1, 1, 0, 1, np.nan]),
            ("layer_0", 0, "b_digit"): np.array([1, 0, 1, 1, np.nan]),
            ("layer_0", 0, "carry_in"): np.array([1, 1, 1, 0, np.nan]),
            **{("layer_1", 0, label): np.ones(5) for label in ("a_digit", "b_digit", "carry_in")}}  # chosen on val: no
    ceiling = composed_ceiling(pd.DataFrame(rows), hits)
    assert ceiling["step"]["0"]["accuracy"] == 0.25 and ceiling["step"]["0"]["n"] == 4
    assert ceiling["operands"]["all"]["accuracy"] == 0.5
    assert ceiling["a_digit"]["0"]["accuracy"] == 0.75
    assert "digit" not in ceiling  # digit_written was not probed
    alone = ceilings_by_tensor(pd.DataFrame(rows), hits)
    assert alone["layer_0"]["step"]["0"]["accuracy"] == 0.25
    assert alone["layer_1"]["step"]["0"]["accuracy"] == 1.0  # read from layer_1 only, whatever val prefers


def test_a_label_with_one_train_value_counts_as_read_in_the_ceiling(tmp_path):
    """At the first column the carry in is always 0: a reader knows it, so the step ceiling needs only the digits."""
    caches = _caches(tmp_path, encoded=True)
    probes = {**PROBES, "labels": ["a_digit", "b_digit", "carry_in"]}
    table, _, hits = probe_caches(caches, 1, probes)
    assert not ((table["label"] == "carry_in") & (table["thought"] == 0)).any()  # no probe row for a constant
    assert ("constant", 0, "carry_in") in hits
    ceiling = composed_ceiling(table, hits)
    assert ceiling["step"]["0"]["accuracy"] == ceiling["operands"]["0"]["accuracy"]


def test_probe_results_do_not_depend_on_the_thread_count(tmp_path):
    """The probe step's units run in parallel over the job's threads; the tables are the same bits either way."""
    caches = _caches(tmp_path, encoded=True)
    before = torch.get_num_threads()
    try:
        tables = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            table, steps, _ = probe_caches(caches, 1, PROBES)
            tables.append((table.to_csv(), steps.to_csv()))
    finally:
        torch.set_num_threads(before)
    assert tables[0] == tables[1]

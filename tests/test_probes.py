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
    _fit_unit,
    best_by_thought,
    best_probes,
    fit_joint,
    fit_probe,
    joint_probe,
    linear_product,
    linear_product_by_tensor,
    probe_caches,
    run_probes,
)
from cocoracle.stats import wilson
from synthetic import synthetic_cache

RUN = {"seeds": [0], "threads": 2, "held_out": "dev"}  # the run section the provenance reads
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
    table, *_ = probe_caches(_caches(tmp_path, encoded=True), 1, PROBES)
    assert len(table) == 2 * 2 * 2  # tensors x thoughts x labels
    assert (table["accuracy"] > table["baseline"] + 0.3).all(), table


def test_probe_does_not_beat_baseline_on_noise(tmp_path):
    table, steps, *_ = probe_caches(_caches(tmp_path, encoded=False), 1, PROBES)
    assert (table["accuracy"] < table["baseline"] + 0.12).all(), table
    assert (steps["accuracy"] < steps["baseline"] + 0.12).all(), steps


def test_steps_table_finds_each_step_where_it_is_encoded_and_nowhere_else(tmp_path):
    _, steps, *_ = probe_caches(_caches(tmp_path, encoded=True), 1, PROBES)
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
    run_probes({"probes": {**PROBES, "joint": {**JOINT, "hidden": [8], "steps": 50}}, "run": RUN}, 1,
               {s: c.path for s, c in caches.items()}, out)
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
    product = summary["linear_product"]
    assert set(product) == {"digit", "carry"}  # the fields probed here (probes.labels)
    assert product["digit"]["0"]["accuracy"] == summary["by_thought"]["digit_written"]["0"]["accuracy"]
    assert product["digit"]["0"]["interval"] == "wilson" and product["digit"]["all"]["interval"] == "cluster bootstrap"
    table = pd.read_csv(out["table"])
    assert list(summary["linear_product_by_tensor"]) == ["thought", "layer_0"]  # each tensor of the cache, alone
    for tensor, by_task in summary["linear_product_by_tensor"].items():
        row = table[(table.tensor == tensor) & (table.thought == 0) & (table.label == "digit_written")].iloc[0]
        assert by_task["digit"]["0"]["accuracy"] == pytest.approx(row["accuracy"], abs=1e-4)
    joint = summary["joint_probe"]  # the same tasks, each per thought with its chosen tensor and grid point
    assert set(joint) == {"digit", "carry"} and set(joint["digit"]) == {"0", "1", "all"}
    assert joint["digit"]["0"]["tensor"] in ("thought", "layer_0") and joint["digit"]["0"]["hidden"] == 8
    assert joint["digit"]["0"]["accuracy"] > 0.8 and joint["digit"]["all"]["interval"] == "cluster bootstrap"
    assert list(summary["joint_probe_by_tensor"]) == ["thought", "layer_0"]


def test_probes_stopped_by_max_iter_are_counted(tmp_path):
    caches = _caches(tmp_path, encoded=True)
    out = _outputs(tmp_path)
    table, steps = run_probes({"probes": {**PROBES, "max_iter": 1}, "run": RUN}, 1,
                              {s: c.path for s, c in caches.items()}, out)
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


def test_linear_product_needs_every_field_of_an_answer_right_on_the_same_item():
    """The step's text is right only where the a-digit, b-digit and carry-in probes (each chosen on val) all are."""
    rows = [{"label": label, "tensor": tensor, "thought": 0, "accuracy": 0.5, "val_accuracy": val, "baseline": 0.1,
             "n": 4} for label in ("a_digit", "b_digit", "carry_in") for tensor, val in (("layer_0", 0.9),
                                                                                         ("layer_1", 0.2))]
    hits = {("layer_0", 0, "a_digit"): np.array([1, 1, 0, 1, np.nan]),
            ("layer_0", 0, "b_digit"): np.array([1, 0, 1, 1, np.nan]),
            ("layer_0", 0, "carry_in"): np.array([1, 1, 1, 0, np.nan]),
            **{("layer_1", 0, label): np.ones(5) for label in ("a_digit", "b_digit", "carry_in")}}  # chosen on val: no
    problems = {0: np.arange(5)}
    product = linear_product(pd.DataFrame(rows), hits, problems)
    assert product["step"]["0"]["accuracy"] == 0.25 and product["step"]["0"]["n"] == 4
    assert product["operands"]["all"]["accuracy"] == 0.5
    assert product["a_digit"]["0"]["accuracy"] == 0.75
    assert "digit" not in product  # digit_written was not probed
    alone = linear_product_by_tensor(pd.DataFrame(rows), hits, problems)
    assert alone["layer_0"]["step"]["0"]["accuracy"] == 0.25
    assert alone["layer_1"]["step"]["0"]["accuracy"] == 1.0  # read from layer_1 only, whatever val prefers


def test_a_label_with_one_train_value_counts_as_read_in_the_linear_product(tmp_path):
    """At the first column the carry in is always 0: a reader knows it, so the step's product needs only the
    digits."""
    caches = _caches(tmp_path, encoded=True)
    probes = {**PROBES, "labels": ["a_digit", "b_digit", "carry_in"]}
    table, _, hits, *_ = probe_caches(caches, 1, probes)
    assert not ((table["label"] == "carry_in") & (table["thought"] == 0)).any()  # no probe row for a constant
    assert ("constant", 0, "carry_in") in hits
    product = linear_product(table, hits, {t: np.arange(100) for t in (0, 1)})
    assert product["step"]["0"]["accuracy"] == product["operands"]["0"]["accuracy"]


def _rows_of(problems: np.ndarray, thoughts: int) -> dict[int, np.ndarray]:
    return {t: problems for t in range(thoughts)}


def test_pooled_figures_get_a_bootstrap_over_problems_and_per_thought_cells_keep_wilson():
    """Three thoughts of each problem read alike: over all thoughts the items are not independent, and the interval
    resamples problems; it is wider than Wilson's over the pooled items, by about sqrt(3). Per thought each problem
    gives one item: Wilson."""
    rng = np.random.default_rng(0)
    right = (rng.random(300) < 0.6).astype(float)  # per problem, the same at every thought
    rows = [{"label": "digit_written", "tensor": "layer_0", "thought": t, "accuracy": 0.6, "val_accuracy": 0.6,
             "baseline": 0.1, "n": 300} for t in range(3)]
    hits = {("layer_0", t, "digit_written"): right for t in range(3)}
    digit = linear_product(pd.DataFrame(rows), hits, _rows_of(np.arange(300), 3))["digit"]
    assert digit["0"]["interval"] == "wilson"
    assert (digit["0"]["low"], digit["0"]["high"]) == wilson(int(right.sum()), 300)
    pooled = digit["all"]
    assert pooled["interval"] == "cluster bootstrap" and pooled["n"] == 900
    naive = wilson(int(3 * right.sum()), 900)
    ratio = (pooled["high"] - pooled["low"]) / (naive[1] - naive[0])
    assert 1.5 < ratio < 2.0, ratio  # sqrt(3) = 1.73
    # items one per problem, pooled over thoughts (other problems at each thought): Wilson holds
    distinct = linear_product(pd.DataFrame(rows), hits, {t: np.arange(300) + 300 * t for t in range(3)})["digit"]
    assert distinct["all"]["interval"] == "wilson"


def _xor_data(n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Operand digits a, b in {0, 1} and carry in 0 stand in for a step, each coded as an XOR: a is 1 where x0 and
    x1 have the same sign, b where x2 and x3 do, which no linear probe reads."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    a, b = (x[:, 0] * x[:, 1] > 0).astype(float), (x[:, 2] * x[:, 3] > 0).astype(float)
    fields = {"a_digit": a, "b_digit": b, "carry_in": np.zeros(n)}
    targets = {("own", None, name): v for name, v in fields.items()}
    return x, targets | {("field", None, name): v for name, v in fields.items()}


JOINT = {"hidden": [16, 64], "alpha": [0.0001], "steps": 300, "lr": 0.01, "seed": 0}


def test_the_joint_probe_reads_a_nonlinear_answer_the_linear_product_cannot():
    """XOR-coded operand digits: each linear probe is at chance, so their product reads the step about a quarter of
    the time; the joint probe reads it nearly always."""
    data = {split: _xor_data(n, seed) for split, n, seed in [("train", 1500, 0), ("val", 300, 1), ("test", 300, 2)]}
    probes = {**PROBES, "labels": ["a_digit", "b_digit", "carry_in"], "joint": JOINT}
    fits = dict(_fit_unit(data, probes))
    rows = [{"label": key[2], "tensor": "layer_0", "thought": 0, **fitted} for key, fitted in fits.items()
            if key[0] == "own" and not fitted.get("constant")]
    hits = {("layer_0", 0, key[2]) if not fitted.get("constant") else ("constant", 0, key[2]): fitted["hits"]
            for key, fitted in fits.items() if key[0] == "own"}
    problems = {0: np.arange(300)}
    product = linear_product(pd.DataFrame(rows), hits, problems)["step"]["0"]["accuracy"]
    joint = pd.DataFrame([{"stage": 1, "tensor": "layer_0", "thought": 0, "task": key[2], **fitted}
                          for key, fitted in fits.items() if key[0] == "joint"])
    joint_hits = {("layer_0", 0, key[2]): fitted["hits"] for key, fitted in fits.items() if key[0] == "joint"}
    read = joint_probe(joint.drop(columns="hits"), joint_hits, problems)
    assert set(read) == {"step", "operands", "a_digit", "b_digit"}  # the tasks whose fields are probed
    assert product < 0.4 and read["step"]["0"]["accuracy"] > 0.85, (product, read["step"]["0"])
    assert read["step"]["0"]["hidden"] in JOINT["hidden"] and read["step"]["0"]["interval"] == "wilson"


def test_the_joint_probe_is_chosen_on_val_and_is_deterministic():
    data = {split: _xor_data(n, seed) for split, n, seed in [("train", 400, 0), ("val", 100, 1), ("test", 100, 2)]}
    tasks = {"step": ("a_digit", "b_digit", "carry_in"), "a_digit": ("a_digit",)}
    first, again = (fit_joint(data, tasks, JOINT) for _ in range(2))
    assert first.keys() == again.keys() == set(tasks)
    for task in tasks:
        assert np.array_equal(first[task]["hits"], again[task]["hits"], equal_nan=True)
        assert first[task]["val_accuracy"] == again[task]["val_accuracy"]
        assert first[task]["steps"] % 25 == 0 or first[task]["steps"] == JOINT["steps"]
    # the val accuracy of the chosen point is the best of the grid: one hidden size alone does no better
    for hidden in JOINT["hidden"]:
        alone = fit_joint(data, tasks, {**JOINT, "hidden": [hidden]})
        assert alone["step"]["val_accuracy"] <= first["step"]["val_accuracy"]


def test_probe_results_do_not_depend_on_the_thread_count(tmp_path):
    """The probe step's units run in parallel over the job's threads; the tables are the same bits either way."""
    caches = _caches(tmp_path, encoded=True)
    before = torch.get_num_threads()
    try:
        tables = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            table, steps, _, joint, _ = probe_caches(caches, 1, {**PROBES, "joint": {**JOINT, "steps": 50}})
            assert len(joint)
            tables.append((table.to_csv(), steps.to_csv(), joint.to_csv()))
    finally:
        torch.set_num_threads(before)
    assert tables[0] == tables[1]

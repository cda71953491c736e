"""The across-seed figures: Student's t intervals over seeds, the wide table and DVC's headline of them."""
import json
import math

import pandas as pd
import pytest
from scipy import stats

from cocoracle.seed_report import headline_across, markdown_table, seed_interval, seed_table


def test_seed_interval_is_students_t_over_the_seeds():
    values = [0.626, 0.661, 0.549, 0.675, 0.60]
    mean, sd, low, high = seed_interval(values)
    half = stats.t.ppf(0.975, 4) * pd.Series(values).std() / math.sqrt(5)
    assert mean == pytest.approx(sum(values) / 5)
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert sd == pytest.approx(pd.Series(values).std())


def test_one_seed_has_a_mean_but_no_interval():
    mean, sd, low, high = seed_interval([0.7])
    assert mean == 0.7 and all(math.isnan(v) for v in (sd, low, high))


def test_interval_over_seeds_is_wider_than_the_spread_of_two_close_seeds_suggests():
    """Two seeds 10 points apart: t with one degree of freedom gives a wide interval, honestly."""
    _, _, low, high = seed_interval([0.55, 0.65])
    assert high - low > 0.6


def _figures(values: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"section": "accuracy", "figure": name, "value": v} for name, v in values.items()])


def test_seed_table_has_each_seed_and_counts_missing_figures():
    table = seed_table({0: _figures({"a": 0.5, "b": 0.9}), 3: _figures({"a": 0.7})})
    a = table.set_index("figure").loc["a"]
    assert a["seeds"] == 2 and a["seed_0"] == 0.5 and a["seed_3"] == 0.7 and a["mean"] == pytest.approx(0.6)
    b = table.set_index("figure").loc["b"]
    assert b["seeds"] == 1 and math.isnan(b["seed_3"]) and math.isnan(b["low"])
    text = markdown_table(table, [0, 3])
    assert "| a | 60.0 % [" in text and "| b | 90.0 % | – | 90.0 | – |" in text


def test_headline_across_keeps_each_key_path_with_mean_low_high():
    headlines = {0: [{"eval": {"stage-1": {"test": 0.8}}}, {"oracle": {"stage-1": {"self": {"step": 0.5}}}}],
                 1: [{"eval": {"stage-1": {"test": 0.9}}}, {"oracle": {"stage-1": {"self": {"step": 0.7}}}}]}
    out = headline_across(headlines)
    assert out["seeds"] == 2
    assert out["eval"]["stage-1"]["test"]["mean"] == pytest.approx(0.85)
    low, high = out["oracle"]["stage-1"]["self"]["step"]["low"], out["oracle"]["stage-1"]["self"]["step"]["high"]
    assert low < 0.6 < high
    single = headline_across({0: [{"eval": {"stage-1": {"test": 0.8}}}]})
    assert single["eval"]["stage-1"]["test"] == {"mean": 0.8, "low": None, "high": None}


def _one_seeds_results(run, accuracy: float) -> None:
    """A seed's results files for params with one latent stage: what run_figures reads."""
    import json

    for kind in ("eval", "probes", "oracle", "interventions"):
        (run / kind).mkdir(parents=True)
    (run / "interventions" / "stage-1.json").write_text(json.dumps({
        "stage": 1, "split": "dev", "problems": 40,
        "ablation": [{"thought": 0, "ablation": mode, "column": c, "n": 40, "correct": int(40 * accuracy) - k}
                     for k, mode in enumerate(("none", "zero")) for c in (0, 1)],
        "patching": [{"thought": 0, "patch": "input", "column": 0, "pairs": 20, "to_donor": 15, "if_ignored": 1}]}))
    for stage in (0, 1):
        split = {"accuracy": accuracy, "teacher_forced": 1.0, "n": 40}
        (run / "eval" / f"stage-{stage}.json").write_text(json.dumps({"stage": stage, "val": split, "dev": split}))
    cell = {"accuracy": accuracy / 2, "low": 0.0, "high": 1.0}
    probe = {"accuracy": accuracy, "low": 0.0, "high": 1.0, "baseline": 0.5, "tensor": "layer_1"}
    (run / "probes" / "stage-1.json").write_text(json.dumps({
        "stage": 1, "by_thought": {"carry_out": {"0": probe}}, "readable": {"carry_out": {"0": None}},
        "readable_at": 0.9, "unconverged": {"max_iter": 100, "probes": 1, "stopped": 0},
        "linear_product": {"step": {"0": cell, "all": cell}}, "joint_probe": {"step": {"0": cell, "all": cell}}}))
    rows = [{"oracle": "self", "condition": "oracle", "task": "step", "thought": thought, "exact_match": accuracy,
             "exact_match_best_baseline": "shuffled"} for thought in ("0", "all")]
    rows += [{"oracle": "self", "condition": "shuffled", "task": "step", "thought": thought, "exact_match": 0.1,
              "exact_match_best_baseline": ""} for thought in ("0", "all")]
    pd.DataFrame(rows).to_csv(run / "oracle" / "stage-1.csv", index=False)


def test_run_figures_read_every_figure_of_a_seed_with_its_baselines_and_references(tmp_path, tiny_params):
    from cocoracle.seed_report import run_figures

    params = {**tiny_params, "coconut": {**tiny_params["coconut"], "num_stages": 1}}
    _one_seeds_results(tmp_path, 0.8)
    figures = run_figures(tmp_path, params).set_index("figure")["value"]
    assert figures["stage 1 · dev · free generation"] == 0.8 and figures["stage 1 · dev · teacher-forced"] == 1.0
    assert figures["stage 1 · self · step · all thoughts · EM"] == 0.8
    assert figures["stage 1 · self · step · thought 0 · best baseline EM"] == 0.1
    assert figures["stage 1 · carry_out · thought 0 · majority baseline"] == 0.5
    assert figures["stage 1 · joint probe · step · all thoughts"] == 0.4
    assert figures["stage 1 · linear-probe product · step · thought 0"] == 0.4
    assert "stage 1 · val · teacher-forced" not in figures  # teacher-forced on the held-out split only
    assert figures["stage 1 · none · thought 0 · column 1"] == 0.8
    assert figures["stage 1 · zero · thought 0 · column 0"] == (int(40 * 0.8) - 1) / 40
    assert figures["stage 1 · input · thought 0 · column 0"] == 0.75
    assert figures["stage 1 · input if ignored · thought 0 · column 0"] == 0.05


def test_the_report_puts_each_intervention_in_a_thought_by_column_grid(tmp_path, tiny_params):
    from cocoracle.headline import path_for
    from cocoracle.seed_report import _results_files, write_seed_report

    params = {**tiny_params, "coconut": {**tiny_params["coconut"], "num_stages": 1}}
    runs = {0: tmp_path / "seed-0", 1: tmp_path / "seed-1"}
    for run, accuracy in zip(runs.values(), (0.8, 0.6), strict=True):
        _one_seeds_results(run, accuracy)
        for path in _results_files(run, params):
            path_for(path).write_text(json.dumps({"accuracy": accuracy}))
    out = {name: tmp_path / "report" / name for name in ("report.md", "seeds.csv", "seeds.json", "seeds.png", "p.html")}
    write_seed_report(params, runs, {"report": out["report.md"], "table": out["seeds.csv"],
                                     "headline": out["seeds.json"], "plot": out["seeds.png"], "page": out["p.html"]})
    text = out["report.md"].read_text()
    assert "| stage | intervention | thought | column 0 | column 1 |" in text
    none = next(line for line in text.splitlines() if line.startswith("| 1 | none | 0 |"))
    assert none.count("%") == 2 and "70.0 %" in none  # the mean of 80 and 60 in both columns
    assert "| 1 | input | 0 | 75.0 % [75.0, 75.0] |" in text
    assert "| 1 | input if ignored | 0 | 5.0 % [5.0, 5.0] |" in text
    assert "| stage | intervention | thought | column 0 |\n" in text  # patching: pairs in column 0 only

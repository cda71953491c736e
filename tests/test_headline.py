"""The headline figures DVC shows as metrics: a few scalars per step, under keys of their own, beside the full
results (cocoracle/headline.py), and what dvc.yaml declares as metrics and plots."""
from __future__ import annotations

import functools
import json
import re

import pytest
import yaml

from cocoracle import headline
from cocoracle.config import load_params, read_yaml
from cocoracle.dvc_yaml import render_dvc_yaml
from cocoracle.loop import live_logger
from cocoracle.provenance import describe, read
from cocoracle.seed_report import headline_across
from helpers_workflow import REPO, flat_keys

MAX_METRIC_COLUMNS = 90  # what `dvc exp show` may show of the default's metrics



def _eval_results(stage: int, splits=("val", "test", "ood")) -> dict:
    block = {"accuracy": 0.5, "teacher_forced": 0.75, "n": 4, "truncated": 1,
             "by_steps": {"2": {"accuracy": 0.5, "teacher_forced": 0.75, "n": 4, "truncated": 1}}}
    return {"stage": stage, **{split: block for split in splits}, "provenance": describe({}, [])}


def _probe_results(stage: int, labels=("digit_written", "carry_out"), thoughts=(0, 1)) -> dict:
    probe = {"accuracy": 0.5, "low": 0.4, "high": 0.6, "baseline": 0.1, "n": 40, "val_accuracy": 0.5,
             "tensor": "layer_1"}
    return {"stage": stage, "best": {label: {**probe, "thought": 0} for label in labels},
            "by_thought": {label: {str(t): {**probe, "accuracy": 0.25 * (t + 1), "thought": t} for t in thoughts}
                           for label in labels},
            "linear_product": {"step": {"0": {"accuracy": 0.2}, "all": {"accuracy": 0.3, "low": 0.2, "high": 0.4}}},
            "joint_probe": {"step": {"0": {"accuracy": 0.4}, "all": {"accuracy": 0.45, "low": 0.3, "high": 0.6}}},
            "readable": {}, "unconverged": {"max_iter": 300, "probes": 8, "stopped": 0},
            "provenance": describe({}, [])}


def _oracle_results(stage: int, tasks=("step", "digit", "carry")) -> dict:
    cell = {"exact_match": 0.5, "exact_match_low": 0.4, "exact_match_high": 0.6, "best_baseline": "majority"}
    oracle = {"selected_step": 2, "selected_val_exact_match": 0.5, "source_tensor": "layer_1",
              **{task: cell for task in tasks}, "by_thought": {task: {"0": cell} for task in tasks}}
    return {"stage": stage, "self_answer_accuracy": {"before": 1.0, "after": 1.0}, "self": oracle,
            "separate": {**oracle, **({"step": {**cell, "exact_match": 0.125}} if "step" in tasks else {})},
            "provenance": describe({}, [])}


def test_headlines_are_a_few_numbers_under_keys_naming_their_step_and_stage():
    cases = [(headline.evaluation(_eval_results(2)),
              {"eval.stage-2.val": 0.5, "eval.stage-2.test": 0.5, "eval.stage-2.ood": 0.5,
               "eval.stage-2.test_tf": 0.75}),
             (headline.probes(_probe_results(1)),
              {"probes.stage-1.thought_probes": 0.375, "probes.stage-1.step_linear_product": 0.3}),
             (headline.oracles(_oracle_results(3)),
              {"oracle.stage-3.self.step": 0.5, "oracle.stage-3.separate.step": 0.125})]
    for made, expected in cases:
        assert flat_keys(made) == expected
    # a step with fewer splits or tasks has fewer figures, and none that is not a number
    assert flat_keys(headline.evaluation(_eval_results(0, splits=("val",)))) == {"eval.stage-0.val": 0.5}
    assert flat_keys(headline.oracles(_oracle_results(1, tasks=("digit",)))) == {}


def test_the_headline_file_sits_beside_its_results_file_which_keeps_the_provenance(tmp_path):
    results = tmp_path / "results/seed-0/eval/stage-1.json"
    results.parent.mkdir(parents=True)
    detail = _eval_results(1)
    results.write_text(json.dumps(detail))
    headline.write(results, headline.evaluation(detail))
    written = tmp_path / "results/seed-0/eval/stage-1-headline.json"
    assert headline.path_for(results) == written and headline.results_for(written) == results
    assert headline.results_for(results) is None
    assert json.loads(written.read_text()) == headline.evaluation(detail)
    assert "provenance" not in written.read_text()
    # `cocoracle provenance` of the headline file is its results file's record
    assert read(written) == read(results) == detail["provenance"]


def test_a_training_runs_dvclive_summary_is_its_last_validation_figure_and_its_curves_stay(tmp_path):
    live_dir = tmp_path / "live"
    with live_logger(live_dir, headline=("oracle_train", "stage-1", "self")) as live:
        for step in range(3):
            live.log_metric("train/loss", 3.0 - step)
            live.log_metric("val/exact_match", 0.25 * step)
            live.next_step()
        assert set(json.loads((live_dir / "metrics.json").read_text())) == {"train", "val", "step"}  # dvclive's
    assert json.loads((live_dir / "metrics.json").read_text()) == {
        "oracle_train": {"stage-1": {"self": {"val_exact_match": 0.5}}}}
    lines = (live_dir / "plots/metrics/train/loss.tsv").read_text().splitlines()
    assert lines == ["step\tloss", "0\t3.0", "1\t2.0", "2\t1.0"]


def test_a_failed_run_keeps_dvclives_own_summary(tmp_path):
    with pytest.raises(RuntimeError), live_logger(tmp_path, headline=("train", "stage-0")) as live:
        live.log_metric("val/accuracy", 0.5)
        live.next_step()
        raise RuntimeError("stopped")
    assert "train" not in json.loads((tmp_path / "metrics.json").read_text())


@functools.cache
def _dvc_stages(params_file: str) -> dict:
    text = render_dvc_yaml(load_params(REPO / params_file), read_yaml(REPO / "config.yaml"), REPO)
    return yaml.safe_load(text)["stages"]


def _synthetic_headline(path: str, params: dict) -> dict:
    """What a run of these params writes to one seed's headline file (figures made up, keys real)."""
    found = re.fullmatch(r"results/seed-\d+/(eval|probes|oracle)/stage-(\d+)-headline\.json", path)
    assert found, path
    kind, stage = found.group(1), int(found.group(2))
    if kind == "eval":
        return headline.evaluation(_eval_results(stage, params["evaluate"]["splits"]))
    if kind == "probes":
        return headline.probes(_probe_results(stage, params["probes"]["labels"]))
    return headline.oracles(_oracle_results(stage, params["oracle"]["tasks"]))


def _seed_headlines(stages: dict, params: dict) -> list[dict]:
    """One seed's headline files, synthesized, from the outputs dvc.yaml declares."""
    outs = [next(iter(o)) for stage in stages.values() for o in stage.get("outs", [])]
    seed = params["run"]["seeds"][0]
    return [_synthetic_headline(path, params) for path in outs
            if path.startswith(f"results/seed-{seed}/") and path.endswith(headline.SUFFIX)]


@pytest.mark.parametrize("params_file", ["params.yaml", "tests/smoke-params.yaml", "params/gpt2-large.yaml"])
def test_dvc_metrics_are_the_across_seed_headline_each_number_in_a_column_of_its_own(params_file):
    """dvc.yaml declares one metrics file, the across-seed headline: each seed headline figure as mean, low and
    high, at most MAX_METRIC_COLUMNS numbers, and no key twice (so `dvc exp show` names each column by its key)."""
    params = load_params(REPO / params_file)
    stages = _dvc_stages(params_file)
    paths = [next(iter(m)) for stage in stages.values() for m in stage.get("metrics", [])]
    assert paths == ["results/report/seeds-headline.json"]
    per_seed = _seed_headlines(stages, params)
    across = headline_across({seed: per_seed for seed in params["run"]["seeds"]})
    columns = list(flat_keys(across))
    assert len(columns) == len(set(columns)) and len(columns) <= MAX_METRIC_COLUMNS, columns
    if params_file == "params.yaml":
        # 4 stages x 4 evaluation figures, 3 x 2 probe and 3 x 2 oracle figures; mean, low, high; the seed count
        assert len(columns) == 3 * (16 + 6 + 6) + 1


def test_dvc_yaml_keeps_each_seeds_summaries_as_outputs_and_their_curves_as_plots():
    stages = _dvc_stages("params.yaml")
    live_dirs = [re.search(r"--live (\S+)", stage["cmd"]).group(1) for stage in stages.values()
                 if "--live" in stage["cmd"]]
    assert len(live_dirs) == 4 + 3 * 2
    outs = {next(iter(o)) for stage in stages.values() for o in stage.get("outs", [])}
    plots = {path: flags for stage in stages.values() for m in stage.get("plots", []) for path, flags in m.items()}
    for live in live_dirs:
        assert f"{live}/metrics.json" in outs and plots[f"{live}/plots/metrics"]["x"] == "step"
        assert live not in plots
    for results in (o for o in outs if re.fullmatch(r"results/seed-0/(eval|probes|oracle)/stage-\d+\.json", o)):
        assert str(headline.path_for(results)) in outs

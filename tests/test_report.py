"""The results report: numbers, best baselines and links come from the pipeline's output files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cocoracle.config import InputError
from cocoracle.report import ORACLE_COLUMNS, _run_labels, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINES = ("shuffled", "random", "no_injection", "majority", "majority_per_position")


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _split(accuracy: float, teacher_forced: float, n: int) -> dict:
    return {"accuracy": accuracy, "teacher_forced": teacher_forced, "n": n,
            "by_steps": {"2": {"accuracy": accuracy, "teacher_forced": teacher_forced, "n": n}}}


def _oracle_rows(stage: int, oracle: str, task: str, thought: str, ems: dict[str, float]) -> list[list]:
    """CSV rows for one (oracle, task, thought): the oracle first, then the baselines in BASELINES order.

    Every metric is EM except token F1 (EM + 0.1); intervals are ±0.05; the oracle's row names the best baseline
    (highest EM) and its difference."""
    best = max(BASELINES, key=lambda c: ems[c])
    rows = []
    for condition, em in ems.items():
        metrics = {"exact_match": em, "exact_match_any_order": em, "token_f1": round(min(em + 0.1, 1), 2),
                   "number_f1": em}
        cells = [stage, oracle, condition, task, thought, 200, "cluster bootstrap" if thought == "all" else "wilson",
                 *metrics.values()]
        for value in metrics.values():
            cells += [round(value - 0.05, 2), round(value + 0.05, 2), best if condition == "oracle" else ""]
        diff = round(em - ems[best], 2)
        cells += [diff, round(diff - 0.05, 2), round(diff + 0.05, 2)] if condition == "oracle" else ["", "", ""]
        rows.append(cells)
    return rows


def _oracle_csv(path: Path, stage: int) -> Path:
    """The best "all" baseline is majority_per_position (0.31), neither the first baseline row nor per-position."""
    lines = [",".join(ORACLE_COLUMNS)]
    for oracle, own in (("separate", round(0.5 + 0.04 * stage, 2)), ("self", round(0.3 + 0.05 * stage, 2))):
        for task in ("step", "answer"):
            for thought in ("0", "1", "all"):
                best = 0.31 if thought == "all" else 0.5  # per-position baselines beat the "all" best: not used
                ems = dict(zip(("oracle",) + BASELINES, (own, 0.10, 0.05, 0.08, 0.20, best), strict=True))
                lines += [",".join(map(str, row)) for row in _oracle_rows(stage, oracle, task, thought, ems)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_dir(path: Path, losses: list[float]) -> Path:
    tsv = path / "plots/metrics/train/loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("timestamp\tstep\tloss\n" + "".join(f"{1700000000 + i}\t{i}\t{x}\n" for i, x in enumerate(losses)))
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> dict:
    """Pipeline outputs for stages 0 and 3, both oracles, two tasks, two thoughts and two training runs."""
    results = tmp_path / "results"
    heatmaps = [results / "probes" / f"stage-{k}.png" for k in (0, 3)]
    step_heatmaps = [results / "probes" / f"stage-{k}-steps.png" for k in (0, 3)]
    for heatmap in heatmaps + step_heatmaps:
        heatmap.parent.mkdir(parents=True, exist_ok=True)
        heatmap.write_bytes(PNG_MAGIC)
    probe = {"accuracy": 0.914, "low": 0.895, "high": 0.930, "baseline": 0.552, "n": 1000, "val_accuracy": 0.92,
             "tensor": "layer_2", "thought": 1}
    weak = {**probe, "accuracy": 0.31, "low": 0.281, "high": 0.341, "tensor": "thought", "thought": 2}
    return {
        "eval_metrics": [_write_json(results / "eval/stage-0.json",
                                     {"stage": 0, "val": _split(0.44, 0.512, 50), "test": _split(0.4, 0.5, 100)}),
                         _write_json(results / "eval/stage-3.json",
                                     {"stage": 3, "val": _split(0.9, 0.95, 50), "test": _split(0.978, 0.99, 100)})],
        "probe_metrics": [_write_json(results / f"probes/stage-{k}.json",
                                      {"stage": k, "best": {"carry_out": probe, "digit_written": probe},
                                       "by_thought": {"carry_out": {"1": probe, "2": weak},
                                                      "digit_written": {"1": probe}},
                                       "linear_product": {"step": {
                                           "1": {"accuracy": 0.9, "low": 0.85, "high": 0.94, "n": 200,
                                                 "interval": "wilson"},
                                           "all": {"accuracy": 0.8, "low": 0.7, "high": 0.88, "n": 400,
                                                   "interval": "cluster bootstrap"}}},
                                       "linear_product_by_tensor": {"layer_2": {"step": {"1": {
                                           "accuracy": 0.6, "low": 0.55, "high": 0.65, "n": 200,
                                           "interval": "wilson"}}}},
                                       "joint_probe": {"step": {"1": {"accuracy": 0.95, "low": 0.91, "high": 0.97,
                                                                      "n": 200, "interval": "wilson",
                                                                      "tensor": "layer_1"}}},
                                       "joint_probe_by_tensor": {"layer_2": {"step": {"1": {
                                           "accuracy": 0.7, "low": 0.63, "high": 0.76, "n": 200,
                                           "interval": "wilson", "tensor": "layer_2"}}}},
                                       "readable_at": 0.9,
                                       "unconverged": {"max_iter": 300, "probes": 40, "stopped": 3 * k},
                                       "readable": {"digit_written": {"0": {**probe, "position": "thought 0"},
                                                                      "1": None},
                                                    "carry_out": {"0": {**weak, "position": "answer 2"},
                                                                  "1": {**probe, "position": "eot"}}}})
                          for k in (0, 3)],
        "probe_heatmaps": heatmaps,
        "step_heatmaps": step_heatmaps,
        "oracle_tables": [_oracle_csv(results / f"oracle/stage-{k}.csv", k) for k in (1, 3)],
        "oracle_metrics": [_write_json(results / f"oracle/stage-{k}.json",
                                       {"stage": k, "self_answer_accuracy": {"before": 0.978, "after": after},
                                        "self": {"source_tensor": "layer_2"}, "separate": {"source_tensor": "layer_2"}})
                           for k, after in ((1, 0.97), (3, 0.853))],
        "train_dirs": [_train_dir(results / "train/stage-0", [5.9, 2.1, 0.4]),
                       _train_dir(results / "oracle-train/self/stage-3", [3.2, 1.0, 0.2])],
        "out_md": results / "report.md",
        "plots_dir": results / "plots",
    }


def test_report_numbers_come_from_the_files(inputs: dict) -> None:
    write_report(**inputs)
    text = inputs["out_md"].read_text()
    assert "44.0 % [31.2, 57.7]" in text and "51.2%" in text  # stage-0 val free-gen (Wilson) and teacher-forced
    assert ("| 3 | separate | step | 200 | 62.0 % [57.0, 67.0] / 31.0% | 62.0 % [57.0, 67.0] / 31.0% | "
            "72.0 % [67.0, 77.0] / 41.0% | 62.0 % [57.0, 67.0] / 31.0% | majority_per_position | "
            "+31.0 pts [+26.0, +36.0] |") in text
    assert "| 1 | self | answer | 200 | 35.0 % [30.0, 40.0] / 31.0% |" in text
    per_thought = text.split("### Per thought position\n")[1]
    assert "| 3 | self | step | 1 | 200 | 45.0 % [40.0, 50.0] / 50.0% |" in per_thought  # below its baseline
    assert "-5.0 pts [-10.0, +0.0] |" in per_thought
    assert "| 3 | 97.8% | 85.3% | -12.5 pts |" in text
    stage3 = text.split("### Stage 3\n")[1].split("\n\n")[0]
    assert "9 of the stage's 40 probes (both tables) stopped at `probes.max_iter` (300)" in text
    assert "| 1 | 91.4 % [89.5, 93.0] / 55.2% · layer_2 | 91.4 % [89.5, 93.0] / 55.2% · layer_2 |" in stage3
    assert "| 2 | – | 31.0 % [28.1, 34.1] / 55.2% · thought |" in stage3  # every thought, not only the best
    where = text.split("### Where is the sum computed?\n")[1].split("#### Stage 3\n")[1].split("\n\n")[0]
    assert "reaches 90% val accuracy" in text
    assert ("| 0 | thought 0: 91.4 % [89.5, 93.0] / 55.2% · layer_2 | "
            "answer 2: 31.0 % [28.1, 34.1] / 55.2% · thought |") in where
    assert "| 1 | nowhere | eot: 91.4 % [89.5, 93.0] / 55.2% · layer_2 |" in where
    references = text.split("### Beside two probe readers\n")[1].split("###")[0]
    # each oracle beside the linear-probe product and the joint probe, over every tensor and from the tensor the
    # oracles read alone, with intervals and their kind; no share of either
    assert ("| 3 | step | 1 | 62.0 % [57.0, 67.0] | 45.0 % [40.0, 50.0] | 90.0 % [85.0, 94.0] | "
            "95.0 % [91.0, 97.0] · layer_1 | layer_2: 60.0 % [55.0, 65.0] / 70.0 % [63.0, 76.0] · layer_2 | "
            "wilson |") in references
    assert ("| 3 | step | all | 62.0 % [57.0, 67.0] | 45.0 % [40.0, 50.0] | 80.0 % [70.0, 88.0] | – | "
            "layer_2: – / – | cluster bootstrap |") in references
    assert references.count("| 3 |") == 2  # none for the answer task or thought 0
    assert "ceiling" not in text and "cluster bootstrap" in text.split("### Over all thought positions")[0]
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## Coconut answer accuracy", "## Oracles", "## Probes", "## Training curves"]


def test_report_plots_are_pngs_linked_relatively(inputs: dict) -> None:
    write_report(**inputs)
    for name in ("accuracy", "oracle", "training"):
        assert (inputs["plots_dir"] / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", inputs["out_md"].read_text())
    assert sorted(links) == sorted(["plots/accuracy.png", "plots/oracle.png", "plots/training.png",
                                    "probes/stage-0.png", "probes/stage-3.png",
                                    "probes/stage-0-steps.png", "probes/stage-3-steps.png"])
    assert all((inputs["out_md"].parent / link).is_file() for link in links)


def test_accuracy_table_is_written_as_data_beside_the_plots(inputs: dict) -> None:
    write_report(**inputs)
    lines = (inputs["plots_dir"] / "accuracy.csv").read_text().splitlines()
    assert lines == ["stage,split,n,accuracy,accuracy_low,accuracy_high,teacher_forced,truncated",
                     "0,val,50,0.44,0.3116,0.5769,0.512,0",  # the Wilson interval of the report's "44.0 % [31.2, 57.7]"
                     "0,test,100,0.4,0.3094,0.498,0.5,0",
                     "3,val,50,0.9,0.7864,0.9565,0.95,0",
                     "3,test,100,0.978,0.93,0.9945,0.99,0"]


def test_the_results_page_is_also_written_as_html(inputs: dict) -> None:
    write_report(**inputs)
    page = (inputs["plots_dir"] / "results.html").read_text()
    text = inputs["out_md"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "|" not in page.split("<body>")[1]  # no markdown table left
    assert all(f"<h2>{h}</h2>" in page for h in ("Coconut answer accuracy", "Oracles", "Probes", "Training curves"))
    assert page.count("<table>") == text.count("\n|---") and page.count("<h3>") == text.count("\n### ")
    assert ("<tr><td>1</td><td>self</td><td>answer</td><td>200</td><td>35.0 % [30.0, 40.0] / 31.0%</td>"
            in page)  # the oracle table's row, cell by cell
    assert "<code>&lt;eot&gt;</code> input" in page  # markdown code, escaped
    assert '<p class="figure">Figure: Coconut answer accuracy by stage (plots/accuracy.png)</p>' in page
    assert "src=" not in page  # the figures are named, not embedded or linked


def test_no_oracle_outputs_is_one_line(inputs: dict) -> None:
    write_report(**{**inputs, "oracle_tables": [], "oracle_metrics": []})
    text = inputs["out_md"].read_text()
    oracles = text.split("## Oracles\n")[1].split("## Probes")[0]
    assert oracles.strip() == "No oracle outputs."
    assert (inputs["plots_dir"] / "oracle.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("key", ["eval_metrics", "probe_metrics", "oracle_tables", "oracle_metrics"])
def test_missing_input_file_names_it(inputs: dict, key: str) -> None:
    missing = inputs[key][0]
    missing.unlink()
    with pytest.raises(InputError, match=re.escape(f"{missing}: file not found")):
        write_report(**inputs)


def test_missing_loss_curve_names_the_file(inputs: dict) -> None:
    tsv = inputs["train_dirs"][1] / "plots/metrics/train/loss.tsv"
    tsv.unlink()
    with pytest.raises(InputError, match=re.escape(f"{tsv}: file not found")):
        write_report(**inputs)


def test_a_self_oracle_run_of_rehearsal_steps_only_has_an_empty_curve(inputs: dict) -> None:
    """A short self-oracle run whose every step drew a rehearsal batch logs train/rehearsal_loss, not train/loss."""
    metrics = inputs["train_dirs"][1] / "plots/metrics/train"
    (metrics / "loss.tsv").rename(metrics / "rehearsal_loss.tsv")
    write_report(**inputs)
    assert (Path(inputs["out_md"]).read_text()).count("![Training loss]") == 1
    assert (Path(inputs["plots_dir"]) / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_corrupt_inputs_name_the_file(inputs: dict) -> None:
    inputs["eval_metrics"][1].write_text("{not json")
    with pytest.raises(InputError, match=re.escape(f"{inputs['eval_metrics'][1]}: not JSON")):
        write_report(**inputs)
    inputs["eval_metrics"][1].write_text('{"val": {}}')
    with pytest.raises(InputError, match="stage: missing"):
        write_report(**inputs)


def test_oracle_table_missing_column_names_the_file(inputs: dict) -> None:
    table = inputs["oracle_tables"][0]
    table.write_text("stage,oracle,condition\n1,self,oracle\n")
    with pytest.raises(InputError, match=re.escape(f"{table}: missing column 'task'")):
        write_report(**inputs)


def test_run_labels_are_paths_below_the_results_dir(inputs: dict) -> None:
    assert _run_labels(inputs["train_dirs"]) == ["train/stage-0", "oracle-train/self/stage-3"]


def _set_in(data, where: str, value):
    """data with the value at a dotted path set (DELETE: removed); a path of '' replaces the whole."""
    if not where:
        return value
    node = data
    *parents, last = where.split(".")
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
# (input, index, dotted field, value, expected text after "<file>: ")
WRONG_SHAPES = [
    ("eval_metrics", 1, "stage", "one", "stage: 'one' is not of type 'integer'"),
    ("eval_metrics", 1, "stage", 1.5, "stage: 1.5 is not of type 'integer'"),
    ("eval_metrics", 1, "test", DELETE, None),  # the val split is left: fine
    ("eval_metrics", 1, "", {"stage": 1}, "no split scored (an evaluation holds at least one of val, dev, test, ood)"),
    ("eval_metrics", 1, "", [1, 2], "not a JSON object (a list)"),
    ("eval_metrics", 1, "test.accuracy", "high", "test.accuracy: 'high' is not of type 'number'"),
    ("eval_metrics", 1, "test.accuracy", 97.8, "test.accuracy: 97.8 is greater than the maximum of 1"),
    ("eval_metrics", 1, "test.n", DELETE, "test.n: missing"),
    ("eval_metrics", 1, "val", [0.9], "val: [0.9] is not of type 'object'"),
    ("eval_metrics", 1, "test.by_steps.2.n", "200", "test.by_steps.2.n: '200' is not of type 'integer'"),
    ("probe_metrics", 0, "stage", "zero", "stage: 'zero' is not of type 'integer'"),
    ("probe_metrics", 0, "by_thought.carry_out.one", {},
     "by_thought.carry_out: key 'one' is not allowed (keys match ^[0-9]+$)"),
    ("probe_metrics", 0, "by_thought.carry_out.1.accuracy", "0.9",
     "by_thought.carry_out.1.accuracy: '0.9' is not of type 'number'"),
    ("probe_metrics", 0, "by_thought.carry_out.1.tensor", DELETE, "by_thought.carry_out.1.tensor: missing"),
    ("probe_metrics", 0, "readable.carry_out.0.position", DELETE, "readable.carry_out.0.position: missing"),
    ("probe_metrics", 0, "readable_at", "90%", "readable_at: '90%' is not of type 'number'"),
    ("probe_metrics", 0, "unconverged.stopped", DELETE, "unconverged.stopped: missing"),
    ("probe_metrics", 0, "linear_product.step.all.low", None, "linear_product.step.all.low: None is not of type "
     "'number'"),
    ("probe_metrics", 0, "joint_probe.step", [], "joint_probe.step: [] is not of type 'object'"),
    ("oracle_metrics", 0, "stage", 0, "stage: 0 is less than the minimum of 1"),
    ("oracle_metrics", 0, "self_answer_accuracy.before", "97.8%",
     "self_answer_accuracy.before: '97.8%' is not of type 'number'"),
    ("oracle_metrics", 0, "self_answer_accuracy", DELETE, "self_answer_accuracy: missing"),
    ("oracle_metrics", 0, "self.source_tensor", 2, "self.source_tensor: 2 is not of type 'string'"),
    ("oracle_metrics", 0, "provenance", {"inputs": []}, "provenance.inputs: [] is not of type 'object'"),
]


@pytest.mark.parametrize("key, index, field, value, expected", WRONG_SHAPES,
                         ids=[f"{k}-{f or 'whole'}-{v!r}"[:60] for k, _, f, v, _ in WRONG_SHAPES])
def test_a_results_file_of_the_wrong_shape_is_one_line_naming_the_field(inputs, key, index, field, value, expected):
    path = inputs[key][index]
    path.write_text(json.dumps(_set_in(json.loads(path.read_text()), field, value)))
    if expected is None:
        write_report(**inputs)
        return
    with pytest.raises(InputError) as caught:
        write_report(**inputs)
    assert str(caught.value) == f"{path}: {expected}"
    assert not inputs["out_md"].exists() and not inputs["plots_dir"].exists()


@pytest.mark.parametrize("column, value, expected", [
    ("stage", "one", "column 'stage': 'one' (row 1) is not an integer"),
    ("n", "1.5", "column 'n': 1.5 (row 1) is not an integer"),
    ("exact_match", "high", "column 'exact_match': 'high' (row 1) is not a number"),
])
def test_an_oracle_table_of_the_wrong_types_names_the_column(inputs, column, value, expected):
    table = inputs["oracle_tables"][0]
    lines = table.read_text().splitlines()
    position = ORACLE_COLUMNS.index(column)
    cells = lines[1].split(",")
    cells[position] = value
    table.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(InputError) as caught:
        write_report(**inputs)
    assert str(caught.value) == f"{table}: {expected}"


def test_a_loss_curve_of_the_wrong_types_names_the_column(inputs):
    tsv = inputs["train_dirs"][0] / "plots/metrics/train/loss.tsv"
    tsv.write_text("timestamp\tstep\tloss\n1700000000\t0\tlow\n")
    with pytest.raises(InputError) as caught:
        write_report(**inputs)
    assert str(caught.value) == f"{tsv}: column 'loss': 'low' (row 1) is not a number"

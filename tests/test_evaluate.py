"""Answer parsing, accuracy summaries, predict() on an overfit tiny model, and evaluate_stage."""
from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
import torch

import cocoracle.evaluate as evaluate_module
from cocoracle import headline
from cocoracle.coconut import Codec, coconut_forward, loss_fn
from cocoracle.config import InputError
from cocoracle.data import problems_table, write_splits
from cocoracle.evaluate import evaluate_stage, marker_first, parse_answer, predict, summarize
from cocoracle.model import save_checkpoint
from conftest import make_tiny_model, tiny_params_dict

CPU = torch.device("cpu")
LAYOUT = {"num_stages": 2, "thoughts_per_step": 1, "answer_sees_question": True}  # as the overfit model trains
STAGE = 1


@pytest.mark.parametrize("text, expected", [
    ("4 + 5 = 9 write 9 | ### 1 2 3", 123),
    ("### 1 2 3", 123),
    ("###123", 123),
    ("7 + 5 = 1 2 write 2 carry 1 | carry 1 write 1 | ### 1 2\n", 12),
    ("### 0", 0),
    ("4 + 5 = 9 write 9 | 1 2 3", None),   # no '###'
    ("", None),
    ("### ", None),                        # nothing after it
    ("###", None),
    ("### 1 2 write 3", None),             # not a number
    ("### 1 2 <eos>", None),
    ("### -1 2", None),
    ("## 1 2", None),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_parse_answer_uses_last_marker():
    assert parse_answer("### 1 2 | ### 3 4") == 34


def test_parse_answer_never_raises_on_odd_digits():
    assert parse_answer("### 1²") is None


def test_parse_answer_rejects_numbers_too_long_for_the_predictions_table():
    assert parse_answer("### " + "9 " * 30) is None
    assert parse_answer("### " + "9" * 18) == int("9" * 18)


@pytest.mark.parametrize("text, expected", [
    ("### 1 2 3", True), (" ###12", True), ("\n### 1", True), ("###", True),
    ("7 + 5 = 1 2 write 2 carry 1 | ### 1 2", False), ("1 2 ### 1 2", False), ("", False), ("## # 1", False),
])
def test_marker_first(text, expected):
    assert marker_first(text) == expected


def test_summarize_hand_made():
    results = [
        {"n_steps": 2, "correct": True, "teacher_forced": True, "truncated": False},
        {"n_steps": 3, "correct": False, "teacher_forced": True, "truncated": True},
        {"n_steps": 3, "correct": True, "teacher_forced": False, "truncated": False},
        {"n_steps": 3, "correct": True, "teacher_forced": True, "truncated": False},
        {"n_steps": 10, "correct": False, "teacher_forced": False, "truncated": True, "not_marker_first": True},
    ]
    summary = summarize(results)
    assert summary["n"] == 5 and summary["not_marker_first"] == 1
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert summary["teacher_forced"] == pytest.approx(3 / 5)
    assert summary["truncated"] == 2 and summary["by_steps"]["3"]["truncated"] == 1
    assert list(summary["by_steps"]) == ["2", "3", "10"]  # numeric order
    assert summary["by_steps"]["2"] == {"accuracy": 1.0, "teacher_forced": 1.0, "n": 1, "truncated": 0}
    assert summary["by_steps"]["3"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["by_steps"]["3"]["teacher_forced"] == pytest.approx(2 / 3)
    assert summary["by_steps"]["3"]["n"] == 3
    assert summary["by_steps"]["10"] == {"accuracy": 0.0, "teacher_forced": 0.0, "n": 1, "truncated": 1}
    assert summarize([])["n"] == 0 and summarize([])["by_steps"] == {} and summarize([])["not_marker_first"] == 0


# ----------------------------------------------------------------------------------------------
# an overfit tiny model


PAIRS = [(7, 5), (38, 64), (905, 187), (4, 3)]


@pytest.fixture(scope="module")
def overfit():
    """A tiny model trained at stage 1 on four problems of 1, 2 and 3 digits until it knows them."""
    rows = problems_table(PAIRS, 0).to_pylist()
    model, tokenizer = make_tiny_model(rows, dtype=torch.float32)
    codec = Codec(tokenizer)
    batch = codec.batch(rows, STAGE, **LAYOUT)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(120):
        optimizer.zero_grad()
        loss = loss_fn(coconut_forward(model, batch), batch)
        loss.backward()
        optimizer.step()
    model.eval()
    return model, codec, rows


def test_predict_on_overfit_model(overfit):
    model, codec, rows = overfit
    results = predict(model, codec, rows, STAGE, LAYOUT, batch_size=3, extra_tokens=30)
    assert [r["id"] for r in results] == [row["id"] for row in rows]
    for r, row in zip(results, rows, strict=True):
        assert r["answer"] == row["a"] + row["b"]
        assert r["n_steps"] == row["n_steps"]
        assert r["correct"] == (r["predicted"] == r["answer"])
        # the generated text is the remaining chain of thought (steps after the first) and the answer
        wanted = "".join(f"{s}|" for s in row["steps"][1:]) + "###" + str(row["answer"])
        assert re.sub(r"\s", "", r["generated"]) == re.sub(r"\s", "", wanted), r["generated"]
    assert all(r["correct"] for r in results)
    assert all(r["teacher_forced"] for r in results)
    assert not any(r["not_marker_first"] for r in results)  # the text steps come first, as they should


@pytest.mark.parametrize("stage", [0, LAYOUT["num_stages"]])
def test_predict_counts_generations_that_should_begin_with_the_marker_and_do_not(overfit, stage):
    """At the all-latent stage the gold text after <eot> begins with ###: a generation that does not is counted;
    at stage 0 (text steps first) none is."""
    model, codec, rows = overfit
    results = predict(model, codec, rows, stage, LAYOUT, batch_size=4, extra_tokens=5)
    flags = [r["not_marker_first"] for r in results]
    assert flags == [stage > 0 and not marker_first(r["generated"]) for r in results]
    assert summarize(results)["not_marker_first"] == sum(flags)


def test_predict_does_not_depend_on_batching(overfit):
    model, codec, rows = overfit
    other = problems_table([(21, 43), (6, 9), (555, 445)], 10).to_pylist()  # unseen: outputs may be wrong
    mixed = rows + other
    one = predict(model, codec, mixed, STAGE, LAYOUT, batch_size=1, extra_tokens=30)
    all_at_once = predict(model, codec, mixed, STAGE, LAYOUT, batch_size=len(mixed), extra_tokens=30)
    assert one == all_at_once
    for r in one:
        assert r["correct"] == (r["predicted"] == r["answer"])
        assert r["predicted"] == parse_answer(r["generated"])


def test_predict_budget_is_each_problems_own_need_and_cut_offs_are_marked(overfit):
    model, codec, rows = overfit
    exact = predict(model, codec, rows, STAGE, LAYOUT, batch_size=4, extra_tokens=0)
    assert all(r["correct"] and not r["truncated"] for r in exact)  # the gold solution fits its own budget exactly
    short = [{**row, "answer": 7} for row in rows if row["answer"] >= 100]  # gold text 2+ tokens shorter
    assert short
    cut = predict(model, codec, short, STAGE, LAYOUT, batch_size=4, extra_tokens=0)
    assert all(r["truncated"] and r["predicted"] != r["answer"] for r in cut)
    assert predict(model, codec, short, STAGE, LAYOUT, batch_size=4, extra_tokens=30)[0]["truncated"] is False


def test_predict_marks_wrong_answers(overfit):
    """The same problems with a falsified gold answer: predictions no longer count as correct."""
    model, codec, rows = overfit
    lying = [{**row, "answer": row["answer"] + 1} for row in rows]
    results = predict(model, codec, lying, STAGE, LAYOUT, batch_size=4, extra_tokens=30)
    assert not any(r["correct"] for r in results)
    assert [r["predicted"] for r in results] == [row["answer"] for row in rows]


# ----------------------------------------------------------------------------------------------
# evaluate_stage


def _params():
    params = tiny_params_dict()
    params["coconut"].update(LAYOUT)
    params["train"]["epochs"] = 1
    params["evaluate"].update({"batch_size": 3, "extra_tokens": 30, "splits": ["val", "test"]})
    return params


@pytest.fixture(scope="module")
def checkpoint(overfit, tmp_path_factory):
    model, codec, _ = overfit
    out = tmp_path_factory.mktemp("eval") / "stage-1"
    save_checkpoint(model, codec.tokenizer, out, {**_params(), "stage": STAGE})
    return out


def _data_dir(root, splits: dict[str, list[tuple[int, int]]]):
    root.mkdir(parents=True, exist_ok=True)
    first = 0
    for split, pairs in splits.items():
        pq.write_table(problems_table(pairs, first), root / f"{split}.parquet")
        first += len(pairs)
    return root


def test_evaluate_stage_writes_metrics_and_predictions(checkpoint, tmp_path):
    data = _data_dir(tmp_path / "data", {"val": PAIRS, "test": PAIRS[:3] + [(21, 43)], "ood": [(1234, 5678)]})
    params = _params()
    metrics = evaluate_stage(params, STAGE, checkpoint, data, tmp_path / "m.json", tmp_path / "p.parquet", CPU)
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert metrics["stage"] == STAGE
    assert set(metrics) == {"stage", "val", "test", "provenance"}  # only the configured splits
    assert json.loads((tmp_path / "m-headline.json").read_text()) == headline.evaluation(metrics)  # DVC's metrics
    assert metrics["val"]["n"] == 4 and metrics["test"]["n"] == 4
    assert metrics["val"]["accuracy"] == 1.0  # the problems the model was trained on
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert [r["split"] for r in table] == ["val"] * 4 + ["test"] * 4
    for split in ("val", "test"):
        rows = [r for r in table if r["split"] == split]
        assert metrics[split]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
        assert sum(m["n"] for m in metrics[split]["by_steps"].values()) == len(rows)
    assert len({r["id"] for r in table}) == len(table)


def test_evaluate_stage_on_generated_data(checkpoint, tmp_path):
    """Problems unknown to the model (its vocabulary still covers them): counts per split add up."""
    params = _params()
    write_splits(params["data"], tmp_path / "data")
    metrics = evaluate_stage(params, STAGE, checkpoint, tmp_path / "data", tmp_path / "m.json",
                             tmp_path / "p.parquet", CPU)
    assert metrics["val"]["n"] == params["data"]["n_val"]
    assert metrics["test"]["n"] == params["data"]["n_test"]


def test_evaluate_stage_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nothing"))) as info:
        evaluate_stage(_params(), STAGE, tmp_path / "nothing", tmp_path, tmp_path / "m.json", tmp_path / "p.parquet",
                       CPU)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.json").exists()


def test_evaluate_stage_missing_split_file_names_it(checkpoint, tmp_path):
    data = _data_dir(tmp_path / "data", {"val": PAIRS})
    with pytest.raises(InputError, match=re.escape(str(data / "test.parquet"))):
        evaluate_stage(_params(), STAGE, checkpoint, data, tmp_path / "m.json", tmp_path / "p.parquet", CPU)


def test_evaluate_stage_when_one_split_has_no_parseable_answer(checkpoint, tmp_path, monkeypatch):
    real_predict = evaluate_module.predict

    def val_without_answers(*args, **kwargs):
        results = real_predict(*args, **kwargs)
        if kwargs.get("desc", "").endswith("val"):
            for r in results:  # e.g. the model never wrote '###' on this split
                r.update(generated="1 + 2 =", predicted=None, correct=False)
        return results

    monkeypatch.setattr(evaluate_module, "predict", val_without_answers)
    data = _data_dir(tmp_path / "data", {"val": PAIRS, "test": PAIRS})
    metrics = evaluate_stage(_params(), STAGE, checkpoint, data, tmp_path / "m.json", tmp_path / "p.parquet", CPU)
    assert metrics["val"]["accuracy"] == 0.0 and metrics["test"]["accuracy"] == 1.0
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 8


def test_evaluate_stage_with_only_empty_splits(checkpoint, tmp_path):
    data = _data_dir(tmp_path / "data", {"val": PAIRS, "ood": []})
    params = _params()
    params["data"]["n_ood"] = 0
    params["evaluate"]["splits"] = ["ood"]
    try:
        metrics = evaluate_stage(params, STAGE, checkpoint, data, tmp_path / "m.json", tmp_path / "p.parquet", CPU)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert "ood" not in metrics

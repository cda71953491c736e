"""Interventions on the thoughts: the hooks replace exactly thought t (checked against the uncached reference
path), donors differ from their recipient only in one column, and the ablation and patching tables count what
they say."""
from __future__ import annotations

import random

import pytest
import torch

from cocoracle.coconut import Codec, generate_with_thoughts, layout_options, naive_forward
from cocoracle.data import column_additions, problems_table
from cocoracle.interventions import (
    ABLATIONS,
    PATCHES,
    Setting,
    ThoughtEdit,
    ablated_thoughts,
    ablation_rows,
    answer_digit,
    donor_for,
    edited,
    patching_rows,
)
from conftest import make_tiny_model

STAGE = 3  # all latent: three thoughts
COCONUT = {"num_stages": 3, "thoughts_per_step": 1}
PAIRS = [(38, 64), (905, 187), (12, 80), (456, 321), (999, 1), (70, 25)]


@pytest.fixture(scope="module")
def model_and_rows():
    rows = problems_table(PAIRS, 0).to_pylist()
    model, tokenizer = make_tiny_model(rows)
    return model, Codec(tokenizer), rows


def _prompt(codec, rows):
    return codec.batch(rows, STAGE, COCONUT["num_stages"], COCONUT["thoughts_per_step"], with_targets=False,
                       **layout_options(COCONUT))


@pytest.mark.parametrize("t", [0, 1])
def test_an_input_edit_is_the_reference_paths_fed_back_vector(model_and_rows, t):
    """Thought t replaced through the hooks gives the later thoughts that the uncached path computes when it
    feeds the same vector as thought t."""
    model, codec, rows = model_and_rows
    batch = _prompt(codec, rows)
    gen = torch.Generator().manual_seed(1)
    vectors = torch.randn(len(rows), model.config.n_embd, dtype=torch.float64, generator=gen)
    with edited(model, ThoughtEdit(t, inputs=vectors)):
        _, out = generate_with_thoughts(model, batch, codec.eos, 4, return_states=False)
    reference = naive_forward(model, batch, feed=lambda i, h: vectors[:, None] if i == t else h)
    torch.testing.assert_close(out.thoughts[:, t + 1:], reference.thoughts[:, t + 1:])
    assert not torch.allclose(out.thoughts[:, t + 1], _plain_thoughts(model, batch, codec)[:, t + 1])


def _plain_thoughts(model, batch, codec):
    return generate_with_thoughts(model, batch, codec.eos, 4, return_states=False)[1].thoughts


def test_recorded_vectors_put_back_change_nothing(model_and_rows):
    model, codec, rows = model_and_rows
    batch = _prompt(codec, rows)
    plain_ids, plain = generate_with_thoughts(model, batch, codec.eos, 6, return_states=False)
    record = ThoughtEdit(1, record=True)
    with edited(model, record):
        generate_with_thoughts(model, batch, codec.eos, 6, return_states=False)
    assert len(record.recorded_blocks) == model.config.n_layer
    torch.testing.assert_close(record.recorded_inputs, plain.thoughts[:, 1])
    with edited(model, ThoughtEdit(1, inputs=record.recorded_inputs, blocks=record.recorded_blocks)):
        ids, out = generate_with_thoughts(model, batch, codec.eos, 6, return_states=False)
    assert ids == plain_ids
    torch.testing.assert_close(out.thoughts, plain.thoughts)


def test_a_layers_patch_makes_the_next_thought_the_donors(model_and_rows):
    """The last block's output at thought t's position is the next thought (after the final layer norm): with
    every block's output taken from the donor, the next thought is the donor's exactly; an input patch alone
    does not do that (the position still attends to the recipient's question)."""
    model, codec, rows = model_and_rows
    recipients, donors = rows[:3], rows[3:]
    record = ThoughtEdit(0, record=True)
    with edited(model, record):
        _, donor = generate_with_thoughts(model, _prompt(codec, donors), codec.eos, 4, return_states=False)
    outs = {}
    for patch in PATCHES:
        edit = ThoughtEdit(0, inputs=record.recorded_inputs,
                           blocks=record.recorded_blocks if patch == "layers" else None)
        with edited(model, edit):
            outs[patch] = generate_with_thoughts(model, _prompt(codec, recipients), codec.eos, 4,
                                                 return_states=False)[1]
    torch.testing.assert_close(outs["layers"].thoughts[:, 1], donor.thoughts[:, 1])
    assert not torch.allclose(outs["input"].thoughts[:, 1], donor.thoughts[:, 1])


@pytest.mark.parametrize("column", [0, 1, 2])
def test_a_donor_differs_only_in_its_column_and_writes_another_digit_there(column):
    rng = random.Random(0)
    for a, b in [(38, 64), (905, 187), (456, 321), (999, 1), (70, 25), (5, 123)]:
        row = problems_table([(a, b)], 0).to_pylist()[0]
        donor = donor_for(row, column, rng)
        width = max(len(str(a)), len(str(b)))
        if column >= width:
            assert donor is None
            continue
        if donor is None:  # no digits there keep both widths and the step count
            continue
        assert (len(str(donor["a"])), len(str(donor["b"]))) == (len(str(a)), len(str(b)))
        assert donor["n_steps"] == row["n_steps"] and donor["answer"] == donor["a"] + donor["b"]
        for i in range(width):
            same = (a // 10**i % 10, b // 10**i % 10) == (donor["a"] // 10**i % 10, donor["b"] // 10**i % 10)
            assert same == (i != column), (a, b, donor, i)
        assert (column_additions(a, b)[column]["digit_written"]
                != column_additions(donor["a"], donor["b"])[column]["digit_written"])


def test_ablations_replace_by_the_mean_zero_or_another_problems():
    thoughts = torch.arange(15.0).reshape(5, 3)
    rows = range(3, 5)  # a last batch of two problems
    torch.testing.assert_close(ablated_thoughts(thoughts, rows, "mean", 1), thoughts.mean(0).expand(2, 3))
    assert not ablated_thoughts(thoughts, rows, "zero", 1).any()
    torch.testing.assert_close(ablated_thoughts(thoughts, rows, "other", 2), thoughts[[0, 1]])
    torch.testing.assert_close(ablated_thoughts(thoughts, range(4, 5), "other", 4), thoughts[[3]])  # one problem
    for bad in (0, 5):  # a problem's own thought, or out of range
        with pytest.raises(ValueError, match="shift"):
            ablated_thoughts(thoughts, rows, "other", bad)
    with pytest.raises(ValueError, match="ablation"):
        ablated_thoughts(thoughts, rows, "noise", 1)


def test_answer_digits_count_from_the_units():
    assert [answer_digit(1092, c) for c in range(4)] == [2, 9, 0, 1]
    assert answer_digit(None, 0) is None


@pytest.fixture(scope="module")
def setting(model_and_rows):
    model, codec, _ = model_and_rows
    return Setting(model, codec, STAGE, COCONUT, batch_size=4, extra_tokens=4)


def test_the_ablation_table_counts_every_column_of_every_problem(setting, model_and_rows):
    rows = model_and_rows[2]
    table = ablation_rows(setting, rows, seed=0)
    modes = {r["ablation"] for r in table}
    assert modes == {"none", *ABLATIONS}
    assert {r["thought"] for r in table} == {0, 1, 2}
    for r in table:
        assert r["n"] == sum(1 for row in rows if row["n_steps"] > r["column"])
        assert 0 <= r["correct"] <= r["n"]
    answers = [a for chunk in setting.batches(rows) for a in setting.answers(chunk)[0]]
    for r in (r for r in table if r["ablation"] == "none"):
        assert r["correct"] == sum(answer_digit(a, r["column"]) == answer_digit(row["answer"], r["column"])
                                   for row, a in zip(rows, answers, strict=True) if row["n_steps"] > r["column"])
    assert table == ablation_rows(setting, rows, seed=0)  # seeded


def test_the_patching_table_counts_pairs_per_thought_patch_and_column(setting, model_and_rows):
    rows = model_and_rows[2]
    table = patching_rows(setting, rows, seed=0)
    assert {(r["thought"], r["patch"]) for r in table} == {(t, p) for t in range(3) for p in PATCHES}
    for r in table:
        assert r["pairs"] > 0
        for key in ("to_donor", "unchanged", "if_ignored"):
            assert 0 <= r[key] <= r["pairs"]
        assert 0 <= r["carry_to_donor"] <= r["carry_pairs"] <= r["pairs"]
    assert table == patching_rows(setting, rows, seed=0)


def test_the_step_writes_both_tables_and_their_json(tmp_path, tiny_params, data_dir):
    """`cocoracle intervene` on a tiny stage-2 checkpoint: every thought and column of the held-out problems, with
    shares that are their counts over their totals, and the provenance of what it read."""
    import json

    import pandas as pd
    import yaml

    from cocoracle.cli import main
    from cocoracle.data import load_split
    from cocoracle.model import initial_model, save_checkpoint

    tiny_params["interventions"].update({"max_problems": 6, "batch_size": 4})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params))
    model, tokenizer = initial_model(tiny_params["model"], load_split(data_dir, "train"), 0)
    save_checkpoint(model, tokenizer, tmp_path / "stage-2", {**tiny_params, "stage": 2})
    out = {name: tmp_path / "out" / name for name in ("ablation.csv", "patching.csv", "stage-2.json")}
    assert main(["intervene", "--params", str(params), "--stage", "2", "--data", str(data_dir), "--checkpoint",
                 str(tmp_path / "stage-2"), "--ablation-table", str(out["ablation.csv"]), "--patching-table",
                 str(out["patching.csv"]), "--metrics", str(out["stage-2.json"])]) == 0
    ablation, patching = pd.read_csv(out["ablation.csv"]), pd.read_csv(out["patching.csv"])
    assert set(ablation["thought"]) == set(patching["thought"]) == {0, 1}
    assert (ablation["accuracy"] == ablation["correct"] / ablation["n"]).all()
    assert (patching["to_donor_share"] == patching["to_donor"] / patching["pairs"]).all()
    metrics = json.loads(out["stage-2.json"].read_text())
    assert (metrics["split"], metrics["problems"], len(metrics["ablation"])) == ("dev", 6, len(ablation))
    assert metrics["provenance"]["inputs"]
    assert main(["intervene", "--params", str(params), "--stage", "0", "--data", str(data_dir), "--checkpoint",
                 str(tmp_path / "stage-2"), "--ablation-table", str(tmp_path / "a.csv"), "--patching-table",
                 str(tmp_path / "p.csv"), "--metrics", str(tmp_path / "m.json")]) == 2

"""Curriculum helpers and train_stage end to end on the tiny parameters."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cocoracle.coconut import Codec, question_positions
from cocoracle.config import SPLITS, InputError, run_seed
from cocoracle.data import load_split
from cocoracle.model import MARKERS, initial_model, load_checkpoint
from cocoracle.train import _check_fits, batch_stages, micro_batches, stage_optimizer_steps, train_stage
from conftest import tiny_params_dict

CPU = torch.device("cpu")


def test_batch_stages():
    rng = np.random.default_rng(0)
    assert batch_stages(0, 50, 1.0, rng) == [0] * 50  # nothing earlier than stage 0
    assert batch_stages(2, 50, 0.0, rng) == [2] * 50
    mixed = batch_stages(3, 400, 1.0, rng)
    assert set(mixed) == {0, 1, 2}  # always an earlier stage, each of them drawn
    some = batch_stages(3, 2000, 0.25, rng)
    assert set(some) <= {0, 1, 2, 3}
    assert 0.18 < sum(s != 3 for s in some) / len(some) < 0.32


def test_micro_batches_walk_through_epochs():
    rng = np.random.default_rng(0)
    n_rows, size = 20, 5
    batches = micro_batches(n_rows, size, 12, rng)
    assert len(batches) == 12 and all(len(b) == size for b in batches)
    for epoch in range(3):  # every 4 batches are one permutation of the rows
        seen = np.concatenate(batches[4 * epoch: 4 * epoch + 4])
        assert sorted(seen.tolist()) == list(range(n_rows))
    assert not all(np.array_equal(batches[i], batches[i + 4]) for i in range(4))  # reshuffled per epoch
    # batches larger than the data set still have the full size
    big = micro_batches(3, 8, 2, np.random.default_rng(1))
    assert all(len(b) == 8 and set(b.tolist()) <= {0, 1, 2} for b in big)


def test_stage_optimizer_steps():
    train = {"batch_size": 8, "grad_accum": 2, "epochs": [2, 0.5], "max_steps": None}
    assert stage_optimizer_steps(train, 0, 100) == 2 * math.ceil(100 / 16)
    assert stage_optimizer_steps(train, 1, 100) == math.ceil(0.5 * math.ceil(100 / 16))
    assert stage_optimizer_steps({**train, "max_steps": 7}, 1, 100) == 7


# ----------------------------------------------------------------------------------------------
# train_stage


@pytest.fixture(scope="module")
def stage0(tmp_path_factory, data_dir):
    """The tiny params' stage 0, trained twice into two directories."""
    params = tiny_params_dict()
    root = tmp_path_factory.mktemp("train")
    for name in ("a", "b"):
        train_stage(params, 0, data_dir, None, root / f"stage-0{name}", root / f"live-0{name}", CPU)
    return params, root


def _longest_question(tokenizer, data_dir) -> int:
    codec = Codec(tokenizer)
    return max(len(codec.encode(r["question"])) for split in SPLITS for r in load_split(data_dir, split))


def test_train_stage_writes_a_safe_checkpoint(stage0, train_rows, data_dir):
    params, root = stage0
    out = root / "stage-0a"
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "params.json", "tokenizer.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".tmp"))]
    assert json.loads((out / "params.json").read_text()) == {**params, "stage": 0}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary directories left

    model, tokenizer = load_checkpoint(out, CPU, torch.float32)
    assert model.config.n_layer == params["model"]["tiny"]["n_layer"]
    assert model.config.n_embd == params["model"]["tiny"]["n_embd"]
    ids = tokenizer.convert_tokens_to_ids(MARKERS)  # each marker is one token of its own, never split or unknown
    assert len(set(ids)) == len(MARKERS) and tokenizer.unk_token_id not in ids
    assert [tokenizer.encode(marker, add_special_tokens=False) for marker in MARKERS] == [[i] for i in ids]
    # positions reserved for the longest question of any split (the OOD split's), saved in the config
    assert question_positions(model) == _longest_question(tokenizer, data_dir) == 10  # '1234 + 5678 =', digit by digit
    # training changed the weights of the seeded initial model
    initial, _ = initial_model(params["model"], train_rows, run_seed(params))
    trained = load_file(out / "model.safetensors")
    start = initial.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in trained if k in start)
    # the training curve was logged
    assert any((root / "live-0a").rglob("*loss*"))


def test_train_stage_is_deterministic(stage0):
    _, root = stage0
    a = (root / "stage-0a" / "model.safetensors").read_bytes()
    b = (root / "stage-0b" / "model.safetensors").read_bytes()
    assert a == b


def test_stage_1_starts_from_stage_0(stage0, data_dir):
    params, root = stage0
    out = root / "stage-1"
    train_stage(params, 1, data_dir, root / "stage-0a", out, root / "live-1", CPU)
    assert json.loads((out / "params.json").read_text())["stage"] == 1
    model, tokenizer = load_checkpoint(out, CPU, torch.float32)
    before = load_file(root / "stage-0a" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert tokenizer.get_vocab() == load_checkpoint(root / "stage-0a", CPU, torch.float32)[1].get_vocab()
    assert question_positions(model) == _longest_question(tokenizer, data_dir)  # kept from stage 0


def test_check_fits_refuses_a_question_longer_than_the_reservation(stage0, data_dir):
    params, root = stage0
    model, tokenizer = load_checkpoint(root / "stage-0a", CPU, torch.float32)
    rows = [r for split in SPLITS for r in load_split(data_dir, split)]
    _check_fits(model, Codec(tokenizer), rows, params["coconut"])
    model.config.coconut_question_positions -= 1
    with pytest.raises(InputError, match="reserves 9 positions"):
        _check_fits(model, Codec(tokenizer), rows, params["coconut"])


def test_train_stage_argument_errors(tiny_params, data_dir, tmp_path):
    with pytest.raises(InputError, match="--init"):
        train_stage(tiny_params, 1, data_dir, None, tmp_path / "out", tmp_path / "live", CPU)
    with pytest.raises(InputError, match="--stage"):
        train_stage(tiny_params, tiny_params["coconut"]["num_stages"] + 1, data_dir, tmp_path / "x",
                    tmp_path / "out", tmp_path / "live", CPU)
    with pytest.raises(InputError, match="train.parquet"):
        train_stage(tiny_params, 0, tmp_path / "no-data", None, tmp_path / "out", tmp_path / "live", CPU)
    assert not (tmp_path / "out").exists()


def test_train_stage_rejects_too_short_context(tiny_params, data_dir, tmp_path):
    tiny_params["model"]["tiny"]["n_positions"] = 16
    with pytest.raises(InputError, match="n_positions"):
        train_stage(tiny_params, 0, data_dir, None, tmp_path / "out", tmp_path / "live", CPU)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("digits", [1, 2, 4, 9])
@pytest.mark.parametrize("layout", [{}, {"order": "last"}, {"step_separator": "before", "thoughts_per_step": 2}])
def test_check_params_counts_the_positions_training_checks(digits, layout):
    """config.longest_sequence (what check-params asks model.tiny.n_positions for) is exactly what _check_fits
    needs for the longest problem of those digits, every column carrying: one position fewer fails."""
    from types import SimpleNamespace

    from cocoracle.config import longest_sequence
    from cocoracle.data import cot_steps, question_text
    from cocoracle.model import build_tiny_tokenizer, corpus_texts

    a = b = 10 ** digits - 1
    row = {"question": question_text(a, b), "steps": cot_steps(a, b), "answer": a + b}
    coconut = {**tiny_params_dict()["coconut"], **layout}
    needed = longest_sequence(digits, coconut)
    codec = Codec(build_tiny_tokenizer(corpus_texts([row])))
    _check_fits(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=needed)), codec, [row], coconut)
    with pytest.raises(InputError, match=f"needs {needed}"):
        _check_fits(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=needed - 1)), codec, [row],
                    coconut)

"""Activation cache: capture correctness, round trip through the reader, corruption detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cocoracle.activations import collect_activations, index_rows, resolve_layers
from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import Codec, naive_forward, thought_steps
from cocoracle.config import InputError
from cocoracle.data import column_additions, cot_steps, problems_table, write_splits
from cocoracle.model import initial_model, save_checkpoint

STAGE = 2


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A tiny float32 checkpoint and the cache of its test split at stage 2 (shards of 7 rows)."""
    from conftest import tiny_params_dict

    root = tmp_path_factory.mktemp("acts")
    params = tiny_params_dict()
    params["activations"] = {"layers": "all", "dtype": "float32", "shard_rows": 7, "batch_size": 4,
                             "max_problems": None}
    write_splits(params["data"], root / "data")
    from cocoracle.data import load_split
    model, tokenizer = initial_model(params["model"], load_split(root / "data", "train"))
    save_checkpoint(model, tokenizer, root / "ckpt", {**params, "stage": STAGE})
    collect_activations(params, STAGE, root / "ckpt", root / "data", "test", root / "cache", torch.device("cpu"))
    return params, root, model.eval(), tokenizer


def test_reader_returns_what_was_captured_and_rows_align(collected):
    params, root, model, tokenizer = collected
    cache = ActivationCache(root / "cache")
    rows = load_rows(root)
    assert cache.manifest["rows"] == len(cache.index) == len(rows) * STAGE  # one row per thought
    assert len(cache.manifest["shards"]) == -(-len(cache.index) // 7)
    batch = Codec(tokenizer).batch(rows, STAGE, params["coconut"]["num_stages"], 1)
    with torch.no_grad():  # thoughts from a full recompute, no cache
        reference = naive_forward(model.double(), batch)
    model.float()
    got = cache.load("thought").reshape(len(rows), STAGE, -1)
    assert np.allclose(got, reference.thoughts.float().numpy(), atol=1e-4)
    # index rows line up with problems and thoughts
    assert list(cache.index["problem_id"]) == [r["id"] for r in rows for _ in range(STAGE)]
    assert list(cache.index["thought"]) == list(range(STAGE)) * len(rows)
    first = cache.index.iloc[0]
    assert first["step_text"] == cot_steps(rows[0]["a"], rows[0]["b"])[0]
    # the last layer at thought t is the next thought's input
    last = cache.load(f"layer_{model.config.n_layer}").reshape(len(rows), STAGE, -1)
    assert np.allclose(last[:, 0], got[:, 1], atol=1e-6)


def test_streamed_batches_equal_a_filtered_load(collected):
    _, root, *_ = collected
    cache = ActivationCache(root / "cache")
    wanted = cache.index[cache.index["thought"] == 1]["row"].to_numpy()
    parts = list(cache.iter_batches("layer_1", wanted, batch_rows=3))
    assert np.array_equal(np.concatenate([p for p, _ in parts]), wanted)
    streamed = np.concatenate([b for _, b in parts])
    assert np.array_equal(streamed, cache.load("layer_1")[wanted])


def load_rows(root):
    from cocoracle.data import load_split
    return load_split(root / "data", "test")


def test_corrupted_shard_is_named(collected, tmp_path):
    _, root, *_ = collected
    import shutil
    copy = tmp_path / "cache"
    shutil.copytree(root / "cache", copy)
    shard = copy / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(InputError, match="shard-00001.safetensors: checksum mismatch"):
        ActivationCache(copy)


def test_truncated_manifest_is_named(collected, tmp_path):
    _, root, *_ = collected
    import shutil
    copy = tmp_path / "cache"
    shutil.copytree(root / "cache", copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(InputError, match="manifest.json: truncated"):
        ActivationCache(copy)
    manifest.unlink()
    with pytest.raises(InputError, match="manifest.json: missing"):
        ActivationCache(copy)


def test_manifest_records_checkpoint_and_layers(collected):
    _, root, model, _ = collected
    manifest = json.loads((root / "cache" / "manifest.json").read_text())
    assert manifest["layers"] == list(range(model.config.n_layer + 1))
    assert manifest["d_model"] == model.config.n_embd and manifest["dtype"] == "float32"
    assert len(manifest["checkpoint_sha256"]) == 64


def test_layers_by_index_and_fraction():
    assert resolve_layers("all", 4) == [0, 1, 2, 3, 4]
    assert resolve_layers([0.5, 4, 1], 4) == [1, 2, 4]
    with pytest.raises(InputError, match="activations.layers"):
        resolve_layers([9], 4)


@pytest.mark.parametrize("a,b", [(347, 285), (999, 1), (50, 50), (7, 5)])
def test_index_labels_agree_with_the_chain_of_thought(a, b):
    for text, labels in zip(cot_steps(a, b), column_additions(a, b), strict=True):
        assert f"write {labels['digit_written']}" in text
        assert f"={labels['digit_sum']} " in text or text.startswith("carry 1")
        assert (" carry 1" in text and not text.startswith("carry")) == bool(labels["carry_out"])


@pytest.mark.parametrize("order, wanted", [("first", [0, 0, 1, 1]), ("last", [2, 2, 3, 3])])
def test_index_rows_label_the_step_each_thought_replaced(order, wanted):
    row = problems_table([(905, 187)], 0).to_pylist()[0]  # four steps
    coconut = {"num_stages": 3, "thoughts_per_step": 2, "order": order, "answer_sees_question": True}
    entries = index_rows(row, 2, coconut, True)
    columns = column_additions(row["a"], row["b"])
    assert [e["step"] for e in entries] == wanted
    assert [e["step_text"] for e in entries] == [row["steps"][s] for s in wanted]
    assert [e["digit_written"] for e in entries] == [columns[s]["digit_written"] for s in wanted]
    short = problems_table([(4, 3)], 0).to_pylist()[0]  # one step: the second thought stands for none
    assert [e["step"] for e in index_rows(short, 2, coconut, True)] == [0, 0, None, None]


def test_collection_follows_the_checkpoints_layout(collected, tmp_path):
    """A checkpoint trained with order last and a blind answer: each thought is labelled with one of the last
    steps, and the thoughts are those of that layout (the other steps given before <bot>), not the default's."""
    params, root, model, tokenizer = collected
    coconut = {**params["coconut"], "order": "last", "answer_sees_question": False}
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", {**params, "coconut": coconut, "stage": STAGE})
    collect_activations(params, STAGE, tmp_path / "ckpt", root / "data", "test", tmp_path / "cache",
                        torch.device("cpu"))
    cache, rows = ActivationCache(tmp_path / "cache"), load_rows(root)
    wanted = [s for r in rows for s in thought_steps(STAGE, coconut["num_stages"], 1, len(r["steps"]), "last")]
    assert [None if np.isnan(s) else int(s) for s in cache.index["step"]] == wanted
    assert any(s not in (None, t) for s, t in zip(wanted, list(range(STAGE)) * len(rows), strict=True))
    batch = Codec(tokenizer).batch(rows, STAGE, coconut["num_stages"], 1, with_targets=False, order="last",
                                   answer_sees_question=False)
    with torch.no_grad():
        reference = naive_forward(model.double(), batch)
    model.float()
    got = cache.load("thought").reshape(len(rows), STAGE, -1)
    assert np.allclose(got, reference.thoughts.float().numpy(), atol=1e-4)
    assert not np.allclose(got, ActivationCache(root / "cache").load("thought").reshape(got.shape), atol=1e-3)

"""Tokenizer, model construction (tiny and local pretrained), checkpoints and device choice."""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.activations import ACT2FN

from cocoracle.coconut import Codec, coconut_forward, loss_fn
from cocoracle.config import InputError, load_params
from cocoracle.model import (
    MARKERS,
    build_tiny_tokenizer,
    corpus_texts,
    initial_model,
    load_checkpoint,
    pick_device,
    save_checkpoint,
)
from conftest import make_tiny_model, run_cli, tiny_params_dict

SPECIALS = ["<bot>", "<eot>", "<thought>", "<pad>", "<eos>"]


def _all_texts(rows):
    for row in rows:
        yield row["question"]
        yield from row["steps"]


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory, train_rows):
    tokenizer = build_tiny_tokenizer(corpus_texts(train_rows))
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("loader", [AutoTokenizer, PreTrainedTokenizerFast], ids=["auto", "fast"])
def test_tokenizer_round_trip(saved_tokenizer, train_rows, loader):
    tokenizer = loader.from_pretrained(saved_tokenizer)
    unk = tokenizer.unk_token_id
    texts = list(_all_texts(train_rows)) + ["4+8+1=13 write 3 carry 1", "carry 1 write 1", "| ### 1 2 3"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert unk not in ids, (text, tokens)
        # every digit is its own token, and nothing is lost or invented
        for token in tokens:
            if any(ch.isdigit() for ch in token):
                assert len(token) == 1, (text, tokens)
        assert "".join(tokens) == re.sub(r"\s", "", text)
        decoded = tokenizer.decode(ids)
        assert decoded.split() == tokens
        assert tokenizer(decoded, add_special_tokens=False)["input_ids"] == ids


def test_tokenizer_specials_are_distinct_single_tokens(saved_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    ids = tokenizer.convert_tokens_to_ids(SPECIALS)
    assert len(set(ids)) == len(SPECIALS)
    assert tokenizer.unk_token_id not in ids and None not in ids
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>"
    for token, token_id in zip(SPECIALS, ids, strict=True):
        # a marker inside text is one token, not split into '<', 'bot', '>'
        assert tokenizer(f"1 + 2 = {token} 3", add_special_tokens=False)["input_ids"][4] == token_id
    number = tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(number) == list("12345")


# ----------------------------------------------------------------------------------------------
# a local pretrained model directory


def test_initial_model_from_local_directory(local_model_dir, mixed_rows):
    path, old_vocab, old_tokenizer = local_model_dir
    for marker in MARKERS:
        assert marker not in old_tokenizer.get_vocab()
    model, tokenizer = initial_model({"name": str(path), "dtype": "float32"}, mixed_rows, 0)
    vocab = tokenizer.get_vocab()
    marker_ids = [vocab.get(m) for m in MARKERS]
    assert None not in marker_ids and len(set(marker_ids)) == len(MARKERS)
    assert len(tokenizer) == old_vocab + len(MARKERS)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.pad_token_id is not None  # falls back to eos
    # the old vocabulary keeps its ids
    text = mixed_rows[2]["question"] + " " + mixed_rows[2]["steps"][0]
    assert (tokenizer(text, add_special_tokens=False)["input_ids"]
            == old_tokenizer(text, add_special_tokens=False)["input_ids"])

    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, 2, 3, 1)
    out = coconut_forward(model.eval(), batch)
    assert out.logits.shape == (*batch.suffix_ids.shape, len(tokenizer))
    assert out.thoughts.shape == (len(mixed_rows), 2, 32)
    assert torch.isfinite(loss_fn(out, batch))


def test_local_directory_params_validate(tmp_path, local_model_dir):
    path, *_ = local_model_dir
    params = tiny_params_dict()
    params["model"]["name"] = str(path)
    file = tmp_path / "local.yaml"
    file.write_text(yaml.safe_dump(params))
    assert load_params(file)["model"]["name"] == str(path)


def test_nonexistent_model_path_fails_validation(tmp_path):
    params = tiny_params_dict()
    params["model"]["name"] = "./no/such/model"
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match=r": model\.name: ") as info:
        load_params(file)
    assert "\n" not in str(info.value)
    result = run_cli("check-params", "--params", file)
    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1 and "model.name" in result.stderr


def test_initial_model_with_unloadable_directory(tmp_path, mixed_rows):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="model.name") as info:
        initial_model({"name": str(tmp_path), "dtype": "float32"}, mixed_rows, 0)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------
# tiny model, checkpoints, device


def test_tiny_model_is_seeded(mixed_rows):
    m1, t1 = make_tiny_model(mixed_rows, seed=0)
    m2, _ = make_tiny_model(mixed_rows, seed=0)
    m3, _ = make_tiny_model(mixed_rows, seed=1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert m1.get_input_embeddings().weight.shape[0] == len(t1)
    assert m1.config.n_layer == 2 and m1.config.n_embd == 32


def test_tiny_model_uses_gpt2s_gelu_as_one_kernel(mixed_rows):
    """The tiny model's MLP activation is GPT-2's tanh-approximated GELU (gelu_new), computed by one fused kernel."""
    model, _ = make_tiny_model(mixed_rows)
    x = torch.linspace(-6, 6, 1001)
    act = model.transformer.h[0].mlp.act
    assert not isinstance(act, type(ACT2FN["gelu_new"]))
    torch.testing.assert_close(act(x), ACT2FN["gelu_new"](x), rtol=1e-6, atol=1e-6)
    assert (act(x) - ACT2FN["gelu"](x)).abs().max() > 1e-5  # the approximation, not the exact GELU


def test_checkpoint_round_trip(tmp_path, tiny_model, mixed_rows):
    model, tokenizer = tiny_model
    model = model.float()
    params = {"anything": [1, 2], "stage": 0}
    save_checkpoint(model, tokenizer, tmp_path / "ckpt", params)
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"model.safetensors", "config.json", "params.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    assert not [p for p in tmp_path.iterdir() if p.name != "ckpt"]  # no temporary directory left

    loaded, loaded_tok = load_checkpoint(tmp_path / "ckpt", torch.device("cpu"), torch.float32)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd[k], ld[k]) for k in sd)
    assert loaded_tok.get_vocab() == tokenizer.get_vocab()
    assert loaded_tok.convert_tokens_to_ids(MARKERS) == tokenizer.convert_tokens_to_ids(MARKERS)
    batch = Codec(loaded_tok).batch(mixed_rows, 1, 3, 1)
    with torch.no_grad():
        assert torch.equal(coconut_forward(model.eval(), batch).logits, coconut_forward(loaded.eval(), batch).logits)


def test_load_checkpoint_errors_name_the_path(tmp_path, tiny_model):
    missing = tmp_path / "missing"
    with pytest.raises(InputError, match=re.escape(str(missing))):
        load_checkpoint(missing, torch.device("cpu"), torch.float32)
    model, tokenizer = tiny_model
    save_checkpoint(model.float(), tokenizer, tmp_path / "broken", {})
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"garbage, not safetensors")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "broken"))) as info:
        load_checkpoint(tmp_path / "broken", torch.device("cpu"), torch.float32)
    assert "\n" not in str(info.value)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda"):
            pick_device("cuda")

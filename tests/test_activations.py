"""Activation cache: capture correctness, round trip through the reader, corruption detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cocoracle.activations as activations
from cocoracle.activations import answer_positions, collect_activations, index_rows, resolve_layers
from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import (
    NO_TOKEN_LIMIT,
    Codec,
    _attention,
    generate_with_thoughts,
    latent_prefix,
    layout_options,
    naive_forward,
    thought_steps,
)
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
    model, tokenizer = initial_model(params["model"], load_split(root / "data", "train"), 0)
    save_checkpoint(model, tokenizer, root / "ckpt", {**params, "stage": STAGE})
    collect_activations(params, STAGE, root / "ckpt", root / "data", "test", root / "cache", torch.device("cpu"))
    return params, root, model.eval(), tokenizer


def thought_rows(cache: ActivationCache):
    """The index rows of the latent thoughts (not the answer pass)."""
    return cache.index[cache.index["position"] == "thought"]


def test_reader_returns_what_was_captured_and_rows_align(collected):
    params, root, model, tokenizer = collected
    cache = ActivationCache(root / "cache")
    rows = load_rows(root)
    thoughts = thought_rows(cache)
    assert cache.manifest["rows"] == len(cache.index)
    assert len(thoughts) == len(rows) * STAGE  # one row per thought
    assert (cache.index["position"] == "eot").sum() == len(rows)  # and at least an <eot> row per problem
    assert len(cache.manifest["shards"]) == -(-len(cache.index) // 7)
    batch = Codec(tokenizer).batch(rows, STAGE, params["coconut"]["num_stages"], 1)
    with torch.no_grad():  # thoughts from a full recompute, no cache
        reference = naive_forward(model.double(), batch)
    model.float()
    got = cache.load("thought", thoughts["row"].to_numpy()).reshape(len(rows), STAGE, -1)
    assert np.allclose(got, reference.thoughts.float().numpy(), atol=1e-4)
    # index rows line up with problems and thoughts
    assert list(thoughts["problem_id"]) == [r["id"] for r in rows for _ in range(STAGE)]
    assert list(thoughts["thought"]) == list(thoughts["offset"]) == list(range(STAGE)) * len(rows)
    assert list(cache.index["row"]) == list(range(len(cache.index)))
    first = cache.index.iloc[0]
    assert first["step_text"] == cot_steps(rows[0]["a"], rows[0]["b"])[0]
    # the last layer at thought t is the next thought's input
    last = cache.load(f"layer_{model.config.n_layer}", thoughts["row"].to_numpy()).reshape(len(rows), STAGE, -1)
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
    thoughts = thought_rows(cache)["row"].to_numpy()
    wanted = [s for r in rows for s in thought_steps(STAGE, coconut["num_stages"], 1, len(r["steps"]), "last")]
    assert [None if np.isnan(s) else int(s) for s in cache.index["step"][thoughts]] == wanted
    assert any(s not in (None, t) for s, t in zip(wanted, list(range(STAGE)) * len(rows), strict=True))
    batch = Codec(tokenizer).batch(rows, STAGE, coconut["num_stages"], 1, with_targets=False, order="last",
                                   answer_sees_question=False)
    with torch.no_grad():
        reference = naive_forward(model.double(), batch)
    model.float()
    got = cache.load("thought", thoughts).reshape(len(rows), STAGE, -1)
    assert np.allclose(got, reference.thoughts.float().numpy(), atol=1e-4)
    default = ActivationCache(root / "cache")
    assert not np.allclose(got, default.load("thought", thought_rows(default)["row"].to_numpy()).reshape(got.shape),
                           atol=1e-3)


# --- the answer pass: <eot>, ### and the answer tokens of the same greedy generation ---------------------------

def test_answer_positions_of_a_known_generation():
    eot, mark = 99, [7]
    # generated: two text tokens, the mark, the answer 5 3 (then the end token at pass 5, not in `generated`)
    assert answer_positions([1, 2, 7, 5, 3], eot, mark, True) == [
        ("eot", 0, 0, 99), ("###", 0, 3, 7), ("answer", 0, 4, 5), ("answer", 1, 5, 3)]
    assert answer_positions([], eot, mark, True) == [("eot", 0, 0, 99)]  # the end token straight away
    assert answer_positions([1, 2, 3], eot, mark, True) == [("eot", 0, 0, 99)]  # no mark
    # cut off by the token limit (which depends on the batch): only <eot>
    assert answer_positions([7, 5, 3], eot, mark, False) == [("eot", 0, 0, 99)]
    # a mark of two tokens: ### is the pass fed its last token; a lone first token is no mark
    assert answer_positions([8, 1, 8, 7, 5], eot, [8, 7], True) == [
        ("eot", 0, 0, 99), ("###", 0, 4, 7), ("answer", 0, 5, 5)]
    assert answer_positions([7, 7], eot, mark, True) == [("eot", 0, 0, 99), ("###", 0, 1, 7), ("answer", 0, 2, 7)]


class Scripted:
    """Forward hook that makes greedy decoding emit a fixed script per problem (keyed by the question's ids):
    it reads the problems off the prefix pass (last input <bot>) and counts decoding passes from the one whose
    last input is <eot>, both by matching input vectors to token embeddings, so it does not rely on
    generate_with_thoughts' call structure. Past its script a row repeats the script's last token."""

    def __init__(self, model, tokenizer, scripts: dict[tuple[int, ...], list[int]]):
        self.weight, self.codec, self.scripts = model.get_input_embeddings().weight, Codec(tokenizer), scripts
        self.rows, self.step = None, None

    def ids(self, vectors):
        """(B, n) token ids of input vectors (B, n, d); -1 where a vector is no token's embedding."""
        same = (vectors[..., None, :] == self.weight.to(vectors.dtype)).all(-1)
        return torch.where(same.any(-1), same.int().argmax(-1), -1)

    def __call__(self, module, args, kwargs, output):
        last = self.ids(kwargs["inputs_embeds"][:, -1:])[:, 0]
        if (last == self.codec.bot).all():
            ids = self.ids(kwargs["inputs_embeds"])
            self.rows = [self.scripts[tuple(i for i in row.tolist() if i != self.codec.pad)[:-1]] for row in ids]
            self.step = None
            return
        if (last == self.codec.eot).all():
            self.step = 0
        elif self.step is None:
            return  # a thought pass
        else:
            self.step += 1
        for r, script in enumerate(self.rows):
            output.logits[r, -1] = -1e4
            output.logits[r, -1, script[min(self.step, len(script) - 1)]] = 1e4


def scripts_for(rows, tokenizer):
    """Per test problem (keyed by its question's ids), the tokens the model is made to emit after <eot>: by
    problem number mod 5, the end token at once; the right answer; text, ### and a wrong answer; the right
    answer; ### 1 1 1 ... without end (cut off where the position table ends)."""
    codec, out = Codec(tokenizer), {}
    for i, row in enumerate(rows):
        text = {0: "", 1: f" ### {row['answer']}", 2: f" 1 | ### {row['answer'] + 1}", 3: f" ### {row['answer']}",
                4: " ### 1"}[i % 5]
        script = codec.encode(text) + ([] if i % 5 == 4 else [codec.eos])
        out[tuple(codec.encode(row["question"]))] = script
    return out


@pytest.fixture(scope="module")
def forced(collected):
    """Float16 caches of the test split at stage 2 while the model's decoding follows `scripts_for`:
    {batch size: cache}, for batch sizes 4 and 1."""
    params, root, model, tokenizer = collected
    scripts = scripts_for(load_rows(root), tokenizer)
    real = activations.load_checkpoint

    def scripted(*args, **kwargs):
        loaded, tok = real(*args, **kwargs)
        loaded.register_forward_hook(Scripted(loaded, tok, scripts), with_kwargs=True)
        return loaded, tok

    caches = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(activations, "load_checkpoint", scripted)
        for size in (4, 1):
            run = {**params, "activations": {**params["activations"], "dtype": "float16", "batch_size": size}}
            collect_activations(run, STAGE, root / "ckpt", root / "data", "test", root / f"forced-{size}",
                                torch.device("cpu"))
            caches[size] = ActivationCache(root / f"forced-{size}")
    return caches


def test_answer_pass_rows_follow_the_generation(collected, forced):
    params, root, model, tokenizer = collected
    cache, rows = forced[4], load_rows(root)
    assert cache.manifest["positions"] == ["thought", "eot", "###", "answer"]
    assert list(cache.index["row"]) == list(range(cache.manifest["rows"]))
    for i, row in enumerate(rows):
        got = cache.index[cache.index["problem_id"] == row["id"]]
        assert list(got["row"]) == list(range(got["row"].iloc[0], got["row"].iloc[0] + len(got)))  # consecutive
        assert list(got["position"].iloc[:STAGE]) == ["thought"] * STAGE and got["token"].iloc[:STAGE].isna().all()
        answer = got.iloc[STAGE:]
        assert (answer["a"] == row["a"]).all() and (answer["b"] == row["b"]).all()
        assert (got["a"] == row["a"]).all() and (got["question"] == row["question"]).all()
        listed = list(zip(answer["position"], answer["offset"], answer["token"], strict=True))
        digits = [("answer", k, d) for k, d in enumerate(str(row["answer"]))]
        if i % 5 == 0:  # the end token at once: only <eot>
            assert listed == [("eot", 0, "<eot>")] and not got["correct"].any()
        elif i % 5 in (1, 3):
            assert listed == [("eot", 0, "<eot>"), ("###", 0, "###"), *digits] and got["correct"].all()
        elif i % 5 == 2:  # text before the mark has no row; a wrong answer
            wrong = [("answer", k, d) for k, d in enumerate(str(row["answer"] + 1))]
            assert listed == [("eot", 0, "<eot>"), ("###", 0, "###"), *wrong] and not got["correct"].any()
        else:  # never ends: cut off at the position table (a batch-dependent limit), so only <eot>
            assert listed == [("eot", 0, "<eot>")] and not got["correct"].any()


def test_answer_rows_have_no_step_and_oracle_items_stay_thoughts(forced, collected):
    from cocoracle.data import COLUMN_LABELS
    from cocoracle.oracle.data import build_items

    _, root, *_ = collected
    cache, rows = forced[4], load_rows(root)
    answer = cache.index[cache.index["position"] != "thought"]
    assert len(answer) and answer[["thought", "step", "step_text", *COLUMN_LABELS]].isna().all().all()
    assert (answer["offset"].notna() & answer["a"].notna() & answer["b"].notna()).all()
    items = build_items(cache, ["digit", "carry"], 1, np.random.default_rng(0))
    replaced = sum(s is not None for r in rows for s in thought_steps(STAGE, 3, 1, len(r["steps"])))
    assert len(items) == 2 * replaced
    assert set(cache.index.loc[items["row"], "position"]) == {"thought"}
    assert all(type(t) is int for t in items["thought"])  # the oracle tables name thoughts 0, 1, .. (not 0.0)


def fed_tokens(script, tokenizer, n_answer):
    """The tokens the forced generation fed after the thoughts (<eot>, the script through the mark, n_answer
    answer tokens) and the column of each answer-pass position among them."""
    codec = Codec(tokenizer)
    mark = codec.encode(" ###")[0]
    if mark not in script:
        return [codec.eot], {("eot", 0): 0}
    head = [codec.eot] + script[:script.index(mark) + 1]
    tail = [t for t in script[len(head) - 1:] if t != codec.eos]
    answer = (tail + [tail[-1]] * n_answer)[:n_answer]  # a script without eos repeats its last token
    columns = {("eot", 0): 0, ("###", 0): len(head) - 1, **{("answer", k): len(head) + k for k in range(n_answer)}}
    return head + answer, columns


def test_answer_pass_states_equal_a_direct_recomputation(collected, forced):
    """Every answer-pass row (all layers, and the input embedding) against one uncached float64 forward over
    question, <bot>, the thoughts and the fed tokens; to float16 precision."""
    params, root, model, tokenizer = collected
    cache, codec, rows = forced[4], Codec(tokenizer), load_rows(root)
    scripts = scripts_for(rows, tokenizer)
    embed = model.double().get_input_embeddings()
    try:
        for row in rows:
            got = cache.index[(cache.index["problem_id"] == row["id"]) & (cache.index["position"] != "thought")]
            fed, columns = fed_tokens(scripts[tuple(codec.encode(row["question"]))], tokenizer,
                                      int((got["position"] == "answer").sum()))
            batch = codec.batch([row], STAGE, params["coconut"]["num_stages"], 1, with_targets=False,
                                **layout_options(params["coconut"]))
            with torch.no_grad():
                thoughts = naive_forward(model, batch).thoughts
                seq = torch.cat([embed(batch.prefix_ids), thoughts, embed(torch.tensor([fed]))], dim=1)
                # the layout's mask: without sight of the question, <eot> and everything from ### on are blind,
                # and every fed token where no text step is left to write
                blind = torch.zeros(1, seq.shape[1], dtype=torch.bool)
                fed_start = seq.shape[1] - len(fed)
                blind[0, fed_start] = True
                blind[0, fed_start + (columns.get(("###", 0), len(fed)) if batch.steps_left[0] else 0):] = True
                mask = _attention(model, batch, torch.ones(1, seq.shape[1], dtype=torch.long), blind, seq.dtype)
                hidden = model(inputs_embeds=seq, attention_mask=mask, output_hidden_states=True).hidden_states
            at = [columns[p, o] for p, o in zip(got["position"], got["offset"], strict=True)]
            assert [tokenizer.decode([fed[c]]) for c in at] == list(got["token"])
            at = [batch.prefix_ids.shape[1] + STAGE + c for c in at]
            for name in cache.tensors:
                want = (seq if name == "thought" else hidden[int(name.split("_")[1])])[0, at].float().numpy()
                assert np.allclose(cache.load(name, got["row"].to_numpy()), want, rtol=2e-3, atol=2e-3), name
    finally:
        model.float()


def test_answer_pass_states_do_not_depend_on_the_batch(forced):
    one, four = forced[1], forced[4]
    assert one.index.equals(four.index)
    answer = four.index[four.index["position"] != "thought"]["row"].to_numpy()
    for name in four.tensors:
        assert np.allclose(one.load(name, answer), four.load(name, answer), rtol=2e-3, atol=2e-3), name
    assert not np.allclose(four.load("layer_1", answer[:1]), four.load("layer_1", answer[1:2]), atol=1e-2)


def test_capture_sees_one_decoding_pass_per_generated_token(collected):
    """The hook's call counting matches generate_with_thoughts: pass 0 is [last thought, <eot>], then one
    single-token pass per generated token, the <eot> pass's states equal coconut_forward's at <eot>, and
    `check` refuses a capture of another shape."""
    params, root, model, tokenizer = collected
    rows = load_rows(root)[:4]
    codec = Codec(tokenizer)
    batch = codec.batch(rows, STAGE, params["coconut"]["num_stages"], 1, with_targets=False)
    handle = model.register_forward_hook(Scripted(model, tokenizer, scripts_for(rows, tokenizer)), with_kwargs=True)
    try:
        with torch.no_grad(), activations.answer_passes(model, STAGE, [0, 1, 2], torch.float32) as passes:
            ids, out = generate_with_thoughts(model, batch, codec.eos, NO_TOKEN_LIMIT)
    finally:
        handle.remove()
    assert out.finished.all() and not model._forward_hooks
    assert len(passes.passes) == 1 + max(map(len, ids)) and passes.widths == [2] + [1] * max(map(len, ids))
    passes.check(ids, out.finished)
    with torch.no_grad():  # pass 0 again: the cached prefix and thoughts, then [last thought, <eot>]
        _, mask, next_pos, cache, thoughts, _ = latent_prefix(model, batch)
        inputs = torch.cat([thoughts[-1], model.get_input_embeddings()(batch.suffix_ids)], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(rows), 2)], dim=1)
        hidden = model(inputs_embeds=inputs, attention_mask=mask, position_ids=next_pos + torch.arange(2),
                       cache=cache, output_hidden_states=True).hidden_states
    for k in (0, 1, 2):
        assert torch.allclose(passes.passes[0][f"layer_{k}"], hidden[k][:, -1], atol=1e-5)
    passes.widths.append(1)
    with pytest.raises(RuntimeError, match="generate_with_thoughts changed"):
        passes.check(ids, out.finished)


@pytest.mark.parametrize("field, value, expected", [
    ("rows", "ten", "rows: 'ten' is not of type 'integer'"),
    ("tensors", "layer_0", "tensors: 'layer_0' is not of type 'array'"),
    ("d_model", 0, "d_model: 0 is less than the minimum of 1"),
    ("shards.0.rows", -1, "shards.0.rows: -1 is less than the minimum of 0"),
    ("shards.0.sha256", 7, "shards.0.sha256: 7 is not of type 'string'"),
    ("provenance.inputs", ["x"], "provenance.inputs: ['x'] is not of type 'object'"),
])
def test_a_manifest_of_the_wrong_types_names_the_field(tmp_path, field, value, expected):
    from synthetic import synthetic_cache

    path = tmp_path / "cache"
    synthetic_cache(path, 8, encoded=False, seed=0)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["provenance"] = {"params_sha256": "0" * 64, "inputs": {}}
    node, keys = manifest, field.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError) as caught:
        ActivationCache(path)
    assert str(caught.value) == f"{path / 'manifest.json'}: {expected}"

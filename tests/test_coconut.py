"""Coconut layout, cached vs naive forward, padding independence, gradients, loss and greedy generation."""
from __future__ import annotations

import copy
import re

import pytest
import torch

from cocoracle.coconut import (
    IGNORE,
    CoconutBatch,
    CoconutOutput,
    Codec,
    coconut_forward,
    generate,
    loss_fn,
    naive_forward,
    stage_layout,
    teacher_forced_correct,
)
from cocoracle.model import BOT, EOT
from conftest import make_tiny_model

K = 3  # num_stages used throughout
C = 2  # thoughts_per_step


def test_stage_layout():
    for c in (1, 2, 3):
        for n in (1, 2, 3, 4, 5):
            assert stage_layout(0, K, c, n) == (0, 0)
            for k in range(1, K):
                assert stage_layout(k, K, c, n) == (k * c, min(k, n))
            assert stage_layout(K, K, c, n) == (K * c, n)  # the last stage replaces every step


def _valid(ids, mask):
    return ids[mask.bool()].tolist()


def _squash(text: str) -> str:
    return re.sub(r"\s", "", text)


@pytest.mark.parametrize("stage", range(K + 1))
def test_codec_batch_layout(tiny_model, mixed_rows, stage):
    _, tokenizer = tiny_model
    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, stage, K, C)
    B = len(mixed_rows)
    assert batch.n_thoughts == stage * C
    assert batch.prefix_ids.shape[0] == batch.suffix_ids.shape[0] == B
    bot, eot = tokenizer.convert_tokens_to_ids([BOT, EOT])
    prefix_lengths, suffix_lengths = set(), set()
    for i, row in enumerate(mixed_rows):
        pm, sm = batch.prefix_mask[i], batch.suffix_mask[i]
        # prefix: left padded, ends with <bot>; suffix: right padded, starts with <eot>
        n_pad = int((pm == 0).sum())
        assert pm[:n_pad].sum() == 0 and pm[n_pad:].all()
        n_suffix = int(sm.sum())
        assert sm[:n_suffix].all() and sm[n_suffix:].sum() == 0
        prefix, suffix = _valid(batch.prefix_ids[i], pm), _valid(batch.suffix_ids[i], sm)
        assert prefix[-1] == bot and suffix[0] == eot
        assert _squash(tokenizer.decode(prefix[:-1])) == _squash(row["question"])
        replaced = stage_layout(stage, K, C, len(row["steps"]))[1]
        wanted = "".join(f"{s}|" for s in row["steps"][replaced:]) + "###" + str(row["answer"])
        assert suffix[-1] == tokenizer.eos_token_id
        assert _squash(tokenizer.decode(suffix[1:-1])) == _squash(wanted)
        # labels: everything after <eot> that is not padding
        labels = batch.labels[i]
        assert labels[0] == IGNORE
        assert labels[1:n_suffix].tolist() == suffix[1:]
        assert (labels[n_suffix:] == IGNORE).all()
        # answer mask: the answer's digits and the end token, at the end of the valid suffix
        answer_ids = batch.suffix_ids[i][batch.answer_mask[i]].tolist()
        assert answer_ids[-1] == tokenizer.eos_token_id
        assert _squash(tokenizer.decode(answer_ids[:-1])) == str(row["answer"])
        assert batch.answer_mask[i].nonzero().max() == n_suffix - 1
        prefix_lengths.add(len(prefix))
        suffix_lengths.add(len(suffix))
    # the mixed rows really need padding on both sides
    assert len(prefix_lengths) > 1 and len(suffix_lengths) > 1


def test_codec_prompt_without_targets(tiny_model, mixed_rows):
    _, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, C, with_targets=False)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    assert batch.suffix_ids.shape == (len(mixed_rows), 1)
    assert (batch.suffix_ids[:, 0] == eot).all()
    assert (batch.labels == IGNORE).all()
    assert not batch.answer_mask.any()
    assert batch.n_thoughts == C


# ----------------------------------------------------------------------------------------------
# cached == naive, and padding independence (float64)


@pytest.mark.parametrize("stage", range(K + 1))
def test_cached_forward_equals_naive(tiny_model, mixed_rows, stage):
    model, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, stage, K, C)
    with torch.no_grad():
        cached, naive = coconut_forward(model, batch), naive_forward(model, batch)
    valid = batch.suffix_mask.bool()
    assert cached.logits.shape == naive.logits.shape == (*batch.suffix_ids.shape, len(tokenizer))
    assert cached.logits.dtype == torch.float64
    torch.testing.assert_close(cached.logits[valid], naive.logits[valid], atol=1e-10, rtol=0)
    assert cached.thoughts.shape == naive.thoughts.shape == (len(mixed_rows), stage * C, model.config.n_embd)
    torch.testing.assert_close(cached.thoughts, naive.thoughts, atol=1e-10, rtol=0)
    if stage:
        # successive thoughts are different vectors (each one is the model's output on the previous)
        assert not torch.allclose(cached.thoughts[:, 0], cached.thoughts[:, -1])


def test_naive_forward_detects_a_wrong_thought(tiny_model, mixed_rows):
    """The cached == naive comparison is sensitive: feeding a different thought changes the logits."""
    model, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, 1)
    with torch.no_grad():
        normal = naive_forward(model, batch)
        zero_thought = _naive_with_thoughts(model, batch, lambda h: torch.zeros_like(h))
    valid = batch.suffix_mask.bool()
    assert (normal.logits[valid] - zero_thought.logits[valid]).abs().max() > 1e-6


@pytest.mark.parametrize("stage", [0, 1, K])
def test_row_logits_do_not_depend_on_batch(tiny_model, mixed_rows, stage):
    model, tokenizer = tiny_model
    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, stage, K, C)
    with torch.no_grad():
        together = coconut_forward(model, batch)
        for i, row in enumerate(mixed_rows):
            alone_batch = codec.batch([row], stage, K, C)
            alone = coconut_forward(model, alone_batch)
            n = int(alone_batch.suffix_mask.sum())
            assert int(batch.suffix_mask[i].sum()) == n
            torch.testing.assert_close(together.logits[i, :n], alone.logits[0, :n], atol=1e-10, rtol=0)
            torch.testing.assert_close(together.thoughts[i], alone.thoughts[0], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------
# loss and gradients


def _naive_with_thoughts(model, batch: CoconutBatch, transform) -> CoconutOutput:
    """naive_forward re-implemented with a hook on each fed-back thought (e.g. detach)."""
    embed = model.get_input_embeddings()
    seq, mask = embed(batch.prefix_ids), batch.prefix_mask
    thoughts = []
    for _ in range(batch.n_thoughts):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(inputs_embeds=seq, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        h = transform(out.hidden_states[-1][:, -1:])
        thoughts.append(h)
        seq = torch.cat([seq, h], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    seq = torch.cat([seq, embed(batch.suffix_ids)], dim=1)
    mask = torch.cat([mask, batch.suffix_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(inputs_embeds=seq, attention_mask=mask, position_ids=positions).logits
    stacked = torch.cat(thoughts, dim=1) if thoughts else seq.new_zeros(seq.shape[0], 0, seq.shape[-1])
    return CoconutOutput(logits[:, -batch.suffix_ids.shape[1]:], stacked)


def _grads(model, forward, batch):
    model.zero_grad(set_to_none=True)
    loss_fn(forward(model, batch), batch).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_loss_is_mean_cross_entropy_over_labels(tiny_model, mixed_rows):
    model, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, C)
    with torch.no_grad():
        out = coconut_forward(model, batch)
        loss = loss_fn(out, batch)
    logp = torch.log_softmax(out.logits.double(), -1)
    terms = []
    for i in range(batch.suffix_ids.shape[0]):
        for j in range(batch.suffix_ids.shape[1] - 1):
            if batch.labels[i, j + 1] != IGNORE:
                terms.append(-logp[i, j, batch.suffix_ids[i, j + 1]])
    assert len(terms) == int(batch.suffix_mask.sum()) - len(mixed_rows)  # every token but <eot>
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def test_gradients_flow_through_thoughts(tiny_model, mixed_rows):
    model, tokenizer = tiny_model
    codec = Codec(tokenizer)

    def detached(m, b):
        return _naive_with_thoughts(m, b, lambda h: h.detach())

    # sanity of the manual variant: without thoughts it is the reference itself
    b0 = codec.batch(mixed_rows, 0, K, C)
    torch.testing.assert_close(_grads(model, detached, b0), _grads(model, naive_forward, b0), atol=1e-12, rtol=0)

    batch = codec.batch(mixed_rows, 2, K, C)
    cached = _grads(model, coconut_forward, batch)
    naive = _grads(model, naive_forward, batch)
    cut = _grads(model, detached, batch)
    assert cached.abs().max() > 0
    torch.testing.assert_close(cached, naive, atol=1e-10, rtol=1e-8)
    assert (cached - cut).norm() > 1e-4 * cached.norm()


def test_a_few_training_steps_lower_the_loss(mixed_rows):
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    batch = Codec(tokenizer).batch(mixed_rows, 2, K, 1)
    with torch.no_grad():
        before = loss_fn(coconut_forward(model, batch), batch).item()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        loss_fn(coconut_forward(model, batch), batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss_fn(coconut_forward(model, batch), batch).item()
    assert after < before - 0.1, (before, after)


# ----------------------------------------------------------------------------------------------
# teacher-forced correctness and greedy generation


def test_teacher_forced_correct(tiny_model, mixed_rows):
    """Rewrite rows' answers to the model's own argmax (left to right): they become 'correct'."""
    model, tokenizer = tiny_model
    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, 1, K, C)
    with torch.no_grad():
        assert not teacher_forced_correct(model, batch).any()  # untrained: wrong answers
        forced = copy.deepcopy(batch)
        rows_to_fix = [0, 2, 3]
        for i in rows_to_fix:
            for j in batch.answer_mask[i].nonzero().flatten().tolist():
                logits = coconut_forward(model, forced).logits
                forced.suffix_ids[i, j] = logits[i, j - 1].argmax()
        correct = teacher_forced_correct(model, forced)
    assert correct.tolist() == [i in rows_to_fix for i in range(len(mixed_rows))]
    # one wrong answer token is enough to fail
    broken = copy.deepcopy(forced)
    j = int(batch.answer_mask[2].nonzero()[0])
    broken.suffix_ids[2, j] = (broken.suffix_ids[2, j] + 1) % len(tokenizer)
    with torch.no_grad():
        assert teacher_forced_correct(model, broken).tolist() == [i in (0, 3) for i in range(len(mixed_rows))]


@pytest.fixture(scope="module")
def noisy_model(mixed_rows):
    """A random model with large weights, so that greedy outputs vary from row to row and step to step."""
    model, tokenizer = make_tiny_model(mixed_rows, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # embeddings and projections; layer norms keep their unit scale
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model, tokenizer


def _reference_greedy_check(model, codec, row, stage, tokens):
    """Check `tokens` is the greedy continuation of `row`'s prompt under naive_forward (no cache, no batch)."""
    prompt = codec.batch([row], stage, K, C, with_targets=False)
    suffix = torch.tensor([[codec.eot, *tokens]])
    batch = CoconutBatch(prompt.prefix_ids, prompt.prefix_mask, prompt.n_thoughts, suffix, torch.ones_like(suffix),
                         suffix.clone(), torch.zeros_like(suffix, dtype=torch.bool))
    with torch.no_grad():
        logits = naive_forward(model, batch).logits[0]
    assert logits[:-1].argmax(-1).tolist() == list(tokens)


@pytest.mark.parametrize("stage", [0, 1, K])
def test_batched_generation_is_greedy_and_batch_independent(noisy_model, mixed_rows, stage):
    model, tokenizer = noisy_model
    codec = Codec(tokenizer)
    steps = 10
    prompt = codec.batch(mixed_rows, stage, K, C, with_targets=False)
    full = generate(model, prompt, eos_id=-1, max_new_tokens=steps)  # no end token: always `steps` tokens
    assert [len(t) for t in full] == [steps] * len(mixed_rows)
    assert len({tuple(t) for t in full}) > 1, "degenerate model: every row generates the same"
    for i, row in enumerate(mixed_rows):
        alone = generate(model, codec.batch([row], stage, K, C, with_targets=False), -1, steps)
        assert alone == [full[i]]
        _reference_greedy_check(model, codec, row, stage, full[i])

    # an end token that the rows reach at different times (or never): outputs stop just before it
    firsts = {}
    for token in {t for seq in full for t in seq}:
        firsts[token] = [seq.index(token) if token in seq else None for seq in full]
    eos = max(firsts, key=lambda t: len(set(firsts[t])))
    assert len(set(firsts[eos])) > 1
    stopped = generate(model, prompt, eos_id=eos, max_new_tokens=steps)
    for i, seq in enumerate(full):
        cut = firsts[eos][i]
        assert stopped[i] == (seq if cut is None else seq[:cut])
        alone = generate(model, codec.batch([mixed_rows[i]], stage, K, C, with_targets=False), eos, steps)
        assert alone == [stopped[i]]

"""Coconut layout, cached vs naive forward, padding independence, gradients, loss and greedy generation."""
from __future__ import annotations

import contextlib
import copy
import functools
import re
from dataclasses import replace

import pytest
import torch

from cocoracle.coconut import (
    IGNORE,
    ORDERS,
    SEPARATORS,
    CoconutBatch,
    Codec,
    coconut_forward,
    generate,
    generate_with_thoughts,
    kept_steps,
    loss_fn,
    naive_forward,
    question_positions,
    remembering_encoder,
    reserve_question_positions,
    stage_layout,
    teacher_forced_correct,
    thought_steps,
)
from cocoracle.data import problems_table
from cocoracle.model import BOT, EOT
from conftest import make_tiny_model

K = 3  # num_stages used throughout
C = 2  # thoughts_per_step
LAYOUTS = {"default": {}, "blind": {"answer_sees_question": False}, "last": {"order": "last"},
           "last-blind": {"order": "last", "answer_sees_question": False},
           "before-blind": {"separator": "before", "answer_sees_question": False},
           "strict": {"answer_sees_question": False, "steps_see_question": False}}  # Codec.batch layout keywords


def _reserved(model, tokenizer, rows):
    """The model with positions reserved for `rows`' questions, as `cocoracle train` reserves them at stage 0."""
    reserve_question_positions(model, Codec(tokenizer), rows)
    return model, tokenizer


@pytest.fixture
def tiny_model(mixed_rows):
    """(model in float64, tokenizer) over the mixed problems' vocabulary, positions reserved for their questions."""
    return _reserved(*make_tiny_model(mixed_rows), mixed_rows)


def test_stage_layout():
    for c in (1, 2, 3):
        for n in (1, 2, 3, 4, 5):
            assert stage_layout(0, K, c, n) == (0, 0)
            for k in range(1, K):
                assert stage_layout(k, K, c, n) == (k * c, min(k, n))
            assert stage_layout(K, K, c, n) == (K * c, n)  # the last stage replaces every step


def test_thought_steps_and_kept_steps_for_both_orders():
    steps = ["s0", "s1", "s2", "s3"]
    # first: stage k's thoughts stand for steps 0..k-1, the later steps stay text
    assert thought_steps(1, K, 2, 4, "first") == [0, 0]
    assert thought_steps(2, K, 2, 4, "first") == [0, 0, 1, 1]
    assert kept_steps(steps, 2, "first") == ["s2", "s3"]
    # last: stage k's thoughts stand for the last k steps, in chain order; the earlier steps stay text
    assert thought_steps(1, K, 2, 4, "last") == [3, 3]
    assert thought_steps(2, K, 1, 4, "last") == [2, 3]
    assert kept_steps(steps, 2, "last") == ["s0", "s1"]
    # the last stage replaces every step in both orders; thoughts beyond a short chain stand for none
    for order in ORDERS:
        assert kept_steps(steps, 4, order) == []
        assert thought_steps(K, K, 1, 4, order) == [0, 1, 2]
        assert thought_steps(K, K, 1, 2, order) == [0, 1, None]
        assert thought_steps(2, K, 1, 1, order) == [0, None]
        assert thought_steps(0, K, 1, 4, order) == []


def _valid(ids, mask):
    return ids[mask.bool()].tolist()


def _squash(text: str) -> str:
    return re.sub(r"\s", "", text)


@pytest.mark.parametrize("separator", SEPARATORS)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stage", range(K + 1))
def test_codec_batch_layout(tiny_model, mixed_rows, stage, order, separator):
    _, tokenizer = tiny_model
    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, stage, K, C, order=order, separator=separator)
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
        assert batch.question_length[i] == len(codec.encode(row["question"]))
        # the remaining steps: written after <eot> (first), or given before <bot> (last)
        kept = kept_steps(row["steps"], stage_layout(stage, K, C, len(row["steps"]))[1], order)
        remaining = "".join(f"{s}|" if separator == "after" else f"|{s}" for s in kept)
        given, written = (remaining, "") if order == "last" else ("", remaining)
        assert _squash(tokenizer.decode(prefix[:-1])) == _squash(row["question"] + given)
        wanted = written + "###" + str(row["answer"])
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


@pytest.mark.parametrize("stage", range(K + 1))
def test_separator_before_fixes_the_token_after_eot(tiny_model, mixed_rows, stage):
    """With `|` before each step, what follows <eot> is `|` (or `###` with no text step left) on every row, so a
    blind <eot> can predict it; with `|` after each step it is the first step's first digit, which varies."""
    _, tokenizer = tiny_model
    codec = Codec(tokenizer)
    bar, mark = codec.encode(" |")[0], codec.encode(" ###")[0]
    first = {sep: codec.batch(mixed_rows, stage, K, C, separator=sep).labels[:, 1].tolist() for sep in SEPARATORS}
    left = [kept_steps(r["steps"], stage_layout(stage, K, C, len(r["steps"]))[1], "first") for r in mixed_rows]
    assert first["before"] == [bar if steps else mark for steps in left]
    if stage == 0:
        assert len(set(first["after"])) > 1 and bar not in first["after"]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stage", [0, 1, K])
def test_blind_batch_marks_the_question_and_the_answer(tiny_model, mixed_rows, stage, order):
    """answer_sees_question false: the same ids, plus the question's columns (question tokens and <bot>, not the
    given steps) and the blind suffix positions (<eot>, then ### and everything after it, not the text steps)."""
    _, tokenizer = tiny_model
    codec = Codec(tokenizer)
    seen = codec.batch(mixed_rows, stage, K, C, order=order)
    batch = codec.batch(mixed_rows, stage, K, C, order=order, answer_sees_question=False)
    assert seen.question is None and seen.blind is None and seen.marker is None
    for name in ("prefix_ids", "prefix_mask", "suffix_ids", "suffix_mask", "labels", "answer_mask"):
        assert torch.equal(getattr(seen, name), getattr(batch, name)), name
    assert batch.n_thoughts == seen.n_thoughts and batch.marker == tokenizer.convert_tokens_to_ids("###")
    text_steps = 0
    for i, row in enumerate(mixed_rows):
        assert batch.prefix_ids[i][batch.question[i]].tolist() == codec.encode(row["question"]) + [codec.bot]
        n = int(batch.suffix_mask[i].sum())
        suffix = batch.suffix_ids[i, :n].tolist()
        mark = suffix.index(batch.marker)
        assert batch.blind[i].tolist() == [True] + [False] * (mark - 1) + [True] * (n - mark) + [False] * (
            batch.blind.shape[1] - n)
        kept = kept_steps(row["steps"], stage_layout(stage, K, C, len(row["steps"]))[1], order)
        assert (mark > 1) == (order == "first" and bool(kept)) == bool(batch.steps_left[i])
        text_steps += mark - 1
    assert text_steps > 0 or stage == K or order == "last"
    prompt = codec.batch(mixed_rows, stage, K, C, with_targets=False, order=order, answer_sees_question=False)
    assert prompt.blind.tolist() == [[True]] * len(mixed_rows)  # <eot>
    assert torch.equal(prompt.steps_left, batch.steps_left) and seen.steps_left is None


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stage", [0, 1, 2, K])
def test_strict_batch_hides_the_question_from_the_text_steps_after_a_thought(tiny_model, mixed_rows, stage, order):
    """steps_see_question false: where a thought precedes them the text steps are blind too (every suffix
    position); at stage 0, with no thought to carry the question, the masks are the blind layout's."""
    _, tokenizer = tiny_model
    codec = Codec(tokenizer)
    blind = codec.batch(mixed_rows, stage, K, C, order=order, **LAYOUTS["blind"])
    strict = codec.batch(mixed_rows, stage, K, C, order=order, **LAYOUTS["strict"])
    for name in ("prefix_ids", "prefix_mask", "suffix_ids", "suffix_mask", "labels", "answer_mask", "question"):
        assert torch.equal(getattr(blind, name), getattr(strict, name)), name
    valid = strict.suffix_mask.bool()
    if stage == 0:
        assert torch.equal(strict.blind, blind.blind) and not strict.steps_blind
    else:
        assert strict.steps_blind and bool(strict.blind[valid].all()) and not bool(strict.blind[~valid].any())
        assert not bool(blind.blind[valid].all()) or order == "last" or stage == K  # text steps left to hide
    prompt = codec.batch(mixed_rows, stage, K, C, with_targets=False, order=order, **LAYOUTS["strict"])
    assert prompt.steps_blind == (stage > 0)
    with pytest.raises(ValueError, match="steps_see_question"):
        codec.batch(mixed_rows, stage, K, C, steps_see_question=False)


def test_codec_prompt_without_targets(tiny_model, mixed_rows):
    _, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, C, with_targets=False)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    assert batch.suffix_ids.shape == (len(mixed_rows), 1)
    assert (batch.suffix_ids[:, 0] == eot).all()
    assert (batch.labels == IGNORE).all()
    assert not batch.answer_mask.any()
    assert batch.n_thoughts == C


@pytest.mark.parametrize("reserved", [True, False])
def test_the_last_layer_at_a_thought_is_the_next_thought(mixed_rows, reserved):
    """docs/method.md's tensor names: layer_L at thought t is the vector fed back as thought t+1, and layer_0 at t
    is thought t plus its position embedding: that of position n + 1 + t, n the positions reserved for questions
    (<bot> sits at n whatever the question), or, in a model without the reservation, of the question's length
    + 1 + t."""
    model, tokenizer = make_tiny_model(mixed_rows)
    if reserved:
        _reserved(model, tokenizer, mixed_rows)
        assert question_positions(model) == max(len(Codec(tokenizer).encode(r["question"])) for r in mixed_rows)
    else:
        assert question_positions(model) is None
    batch = Codec(tokenizer).batch(mixed_rows, K, K, C, with_targets=False)
    _, out = generate_with_thoughts(model, batch, tokenizer.eos_token_id, 3)
    assert out.thoughts.shape[1] >= 2
    assert torch.equal(out.thought_states[-1][:, :-1], out.thoughts[:, 1:])
    start = question_positions(model) + 1 if reserved else batch.prefix_mask.sum(1, keepdim=True)
    expected = out.thoughts + model.transformer.wpe(start + torch.arange(out.thoughts.shape[1]))
    assert torch.allclose(out.thought_states[0], expected)


# ----------------------------------------------------------------------------------------------
# cached == naive, and padding independence (float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stage", range(K + 1))
def test_cached_forward_equals_naive(tiny_model, mixed_rows, stage, layout):
    model, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, stage, K, C, **LAYOUTS[layout])
    with torch.no_grad():
        cached, naive = coconut_forward(model, batch), naive_forward(model, batch)
    assert torch.isfinite(cached.logits).all() and torch.isfinite(naive.logits).all()
    valid = batch.suffix_mask.bool()
    assert cached.logits.shape == naive.logits.shape == (*batch.suffix_ids.shape, len(tokenizer))
    assert cached.logits.dtype == torch.float64
    torch.testing.assert_close(cached.logits[valid], naive.logits[valid], atol=1e-10, rtol=0)
    assert cached.thoughts.shape == naive.thoughts.shape == (len(mixed_rows), stage * C, model.config.n_embd)
    torch.testing.assert_close(cached.thoughts, naive.thoughts, atol=1e-10, rtol=0)
    if stage:
        # successive thoughts are different vectors (each one is the model's output on the previous)
        assert not torch.allclose(cached.thoughts[:, 0], cached.thoughts[:, -1])


@pytest.mark.parametrize("layout", ["default", "blind"])
def test_cached_forward_equals_naive_without_a_reservation(mixed_rows, layout):
    """A model without positions reserved for questions (not trained by `cocoracle train`) counts them on after
    the question, in both implementations alike; a reservation shorter than a question is refused."""
    model, tokenizer = make_tiny_model(mixed_rows)
    batch = Codec(tokenizer).batch(mixed_rows, K, K, C, **LAYOUTS[layout])
    with torch.no_grad():
        cached, naive = coconut_forward(model, batch), naive_forward(model, batch)
    valid = batch.suffix_mask.bool()
    torch.testing.assert_close(cached.logits[valid], naive.logits[valid], atol=1e-10, rtol=0)
    _reserved(model, tokenizer, mixed_rows)
    with torch.no_grad():
        assert (coconut_forward(model, batch).logits[valid] - cached.logits[valid]).abs().max() > 1e-6
    model.config.coconut_question_positions = int(batch.question_length.max()) - 1
    for forward in (coconut_forward, naive_forward):
        with pytest.raises(ValueError, match="reserves"):
            forward(model, batch)


def test_naive_forward_detects_a_wrong_thought(tiny_model, mixed_rows):
    """The cached == naive comparison is sensitive: feeding a different thought changes the logits."""
    model, tokenizer = tiny_model
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, 1)
    with torch.no_grad():
        normal = naive_forward(model, batch)
        zero_thought = naive_forward(model, batch, lambda t, h: torch.zeros_like(h))
    valid = batch.suffix_mask.bool()
    assert (normal.logits[valid] - zero_thought.logits[valid]).abs().max() > 1e-6


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stage", [0, 1, K])
def test_row_logits_do_not_depend_on_batch(tiny_model, mixed_rows, stage, layout):
    model, tokenizer = tiny_model
    codec = Codec(tokenizer)
    batch = codec.batch(mixed_rows, stage, K, C, **LAYOUTS[layout])
    with torch.no_grad():
        together = coconut_forward(model, batch)
        for i, row in enumerate(mixed_rows):
            alone_batch = codec.batch([row], stage, K, C, **LAYOUTS[layout])
            alone = coconut_forward(model, alone_batch)
            n = int(alone_batch.suffix_mask.sum())
            assert int(batch.suffix_mask[i].sum()) == n
            torch.testing.assert_close(together.logits[i, :n], alone.logits[0, :n], atol=1e-10, rtol=0)
            torch.testing.assert_close(together.thoughts[i], alone.thoughts[0], atol=1e-10, rtol=0)


# ----------------------------------------------------------------------------------------------
# answer_sees_question false: the question reaches the answer only through the thoughts (and text steps)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stage", [0, 1, K])
def test_blind_answer_changes_the_suffix_not_the_thoughts(tiny_model, mixed_rows, stage, order):
    model, tokenizer = tiny_model
    codec = Codec(tokenizer)
    with torch.no_grad():
        seen = coconut_forward(model, codec.batch(mixed_rows, stage, K, C, order=order))
        blind = coconut_forward(model, codec.batch(mixed_rows, stage, K, C, order=order, answer_sees_question=False))
    torch.testing.assert_close(blind.thoughts, seen.thoughts, atol=0, rtol=0)  # thoughts see the question
    valid = codec.batch(mixed_rows, stage, K, C, order=order).suffix_mask.bool()
    assert (blind.logits[valid] - seen.logits[valid]).abs().max() > 1e-6


def _two_questions(stage: int, order: str, layout: dict, tokenizer):
    """Batches of 38 + 64 and of the same row with the question 37 + 65: same lengths, steps and answer."""
    row = problems_table([(38, 64)], 0).to_pylist()[0]
    other = {**row, "question": problems_table([(37, 65)], 0).to_pylist()[0]["question"]}
    codec = Codec(tokenizer)
    return [codec.batch([r], stage, K, C, order=order, **layout) for r in (row, other)]


@contextlib.contextmanager
def _thought_states(model, batch: CoconutBatch, saved: list[torch.Tensor] | None = None):
    """During naive_forward's full-sequence pass, record every block's output at the thought columns (yielded
    list), or replace them by `saved`: the thoughts' states at every layer, not only the fed-back vectors."""
    first, n = batch.prefix_ids.shape[1], batch.n_thoughts
    full = first + n + batch.suffix_ids.shape[1]
    record: list[torch.Tensor] = []

    def hook(layer, block, args, out):
        if out.shape[1] != full:  # a pass that computes a thought
            return None
        if saved is None:
            record.append(out[:, first:first + n].clone())
            return None
        out = out.clone()
        out[:, first:first + n] = saved[layer]
        return out

    handles = [block.register_forward_hook(functools.partial(hook, i)) for i, block in enumerate(model.transformer.h)]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("layout", ["default", "blind", "strict"])
@pytest.mark.parametrize("stage", [1, K])
def test_question_reaches_the_answer_only_through_thoughts_and_text(tiny_model, stage, layout, order):
    """Give question B question A's thoughts (fed-back vectors and their states at every layer, which attend to
    the question): with answer_sees_question false a suffix position's logits equal A's as long as no text step
    (which sees the question) precedes it, at the all-latent stage all of them; with true they all change.
    With steps_see_question false too (`strict`) no text step after a thought sees the question: all of them."""
    model, tokenizer = tiny_model
    answer_sees_question = LAYOUTS[layout].get("answer_sees_question", True)
    a, b = _two_questions(stage, order, LAYOUTS[layout], tokenizer)
    assert not torch.equal(a.prefix_ids, b.prefix_ids) and torch.equal(a.suffix_ids, b.suffix_ids)
    with torch.no_grad():
        with _thought_states(model, a) as states:
            out_a = naive_forward(model, a)
        assert len(states) == model.config.n_layer
        with _thought_states(model, b, states):
            swapped = naive_forward(model, b, lambda t, h: out_a.thoughts[:, t:t + 1])
        own = naive_forward(model, b)
    change = (swapped.logits - out_a.logits).abs().amax(-1)[0]
    text = ~a.blind[0] if a.blind is not None else torch.ones_like(a.suffix_mask[0], dtype=torch.bool)
    given = a.question is not None and bool((a.prefix_mask.bool() & ~a.question).any())  # steps before <bot>
    isolated = ~((text.cumsum(0) > 0) | given)  # no text step at or before the position
    assert bool(isolated.any()) == (not answer_sees_question and (stage == K or order == "first"))
    every_step_blind = layout == "strict" and order == "first"  # order last gives its text steps before <bot>
    assert bool(isolated.all()) == (not answer_sees_question and (stage == K or every_step_blind))
    assert (change[isolated] < 1e-12).all(), change
    assert (change[~isolated] > 1e-9).all(), change
    # the question changes the thoughts, and through them the answer
    assert (own.logits - out_a.logits).abs().max() > 1e-6


# ----------------------------------------------------------------------------------------------
# loss and gradients


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


@pytest.mark.parametrize("layout", ["default", "last-blind"])
def test_gradients_flow_through_thoughts(tiny_model, mixed_rows, layout):
    model, tokenizer = tiny_model

    def detached(m, b):
        return naive_forward(m, b, lambda t, h: h.detach())

    batch = Codec(tokenizer).batch(mixed_rows, 2, K, C, **LAYOUTS[layout])
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
    model, tokenizer = _reserved(*make_tiny_model(mixed_rows, seed=3), mixed_rows)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # embeddings and projections; layer norms keep their unit scale
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model, tokenizer


def _greedy_reference(model, prompt: CoconutBatch, tokens: list[int]) -> list[int]:
    """The argmax after <eot> and each of `tokens` under naive_forward (no cache) for a one-row prompt, the
    generated tokens blind (answer_sees_question false) from the prompt's marker on, or all of them when the
    prompt's steps are blind or the row has no text step left: `tokens` when they are the greedy continuation."""
    suffix = torch.tensor([[prompt.suffix_ids[0, 0].item(), *tokens]])
    blind = None
    if prompt.question is not None:
        marked = torch.tensor(tokens, dtype=torch.long) == (-1 if prompt.marker is None else prompt.marker)
        every = prompt.steps_blind or not bool(prompt.steps_left[0])
        blind = torch.cat([torch.ones(1, dtype=torch.bool), (marked.cumsum(0) > 0) | every])[None]
    batch = replace(prompt, suffix_ids=suffix, suffix_mask=torch.ones_like(suffix), labels=suffix.clone(),
                    answer_mask=torch.zeros_like(suffix, dtype=torch.bool), blind=blind)
    with torch.no_grad():
        return naive_forward(model, batch).logits[0, :-1].argmax(-1).tolist()


def _reference_greedy_check(model, codec, row, stage, tokens):
    """Check `tokens` is the greedy continuation of `row`'s prompt under naive_forward (no cache, no batch)."""
    assert _greedy_reference(model, codec.batch([row], stage, K, C, with_targets=False), tokens) == list(tokens)


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


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("stage", [0, 1, K])
def test_blind_generation_is_greedy_and_batch_independent(noisy_model, mixed_rows, stage, order):
    """answer_sees_question false in greedy generation: <eot> and every token from the marker (###) on are blind,
    the tokens before it are text steps, in rows with text steps left; in the others (order last, and the
    all-latent stage) every generated token is blind. A token the rows emit at different times stands in for ###."""
    model, tokenizer = noisy_model
    codec = Codec(tokenizer)
    steps = 10

    def prompt(rows, marker=None):
        batch = codec.batch(rows, stage, K, C, with_targets=False, order=order, answer_sees_question=False)
        return batch if marker is None else replace(batch, marker=marker)

    free = generate(model, prompt(mixed_rows), eos_id=-1, max_new_tokens=steps)
    firsts = {t: {seq.index(t) for seq in free if t in seq[:-1]} for seq in free for t in seq}
    marker = max(firsts, key=lambda t: len(firsts[t]))
    assert len(firsts[marker]) > 1, "no token to stand in for ###"
    full = generate(model, prompt(mixed_rows, marker), eos_id=-1, max_new_tokens=steps)
    seen = generate(model, codec.batch(mixed_rows, stage, K, C, with_targets=False, order=order), -1, steps)
    assert full != seen  # the mask reaches generation
    rule_matters = False
    for i, row in enumerate(mixed_rows):
        alone = prompt([row], marker)
        assert generate(model, alone, -1, steps) == [full[i]]
        assert _greedy_reference(model, alone, full[i]) == full[i]
        rule_matters |= _greedy_reference(model, replace(alone, marker=None), full[i]) != full[i]
    # treating every generated token as a text step would not reproduce the generation, where there are any
    assert rule_matters == (order == "first" and stage < K)
    if order == "last" or stage == K:  # no text step left: the marker changes nothing
        assert generate(model, prompt(mixed_rows), -1, steps) == full


@pytest.mark.parametrize("stage", [1, K])
def test_strict_generation_is_greedy_and_batch_independent(noisy_model, mixed_rows, stage):
    """steps_see_question false in greedy generation: every generated token is blind, text step or not, as in
    the naive reference; the blind layout's generation (text steps see the question) differs."""
    model, tokenizer = noisy_model
    codec = Codec(tokenizer)
    steps = 10
    prompt = codec.batch(mixed_rows, stage, K, C, with_targets=False, **LAYOUTS["strict"])
    full = generate(model, prompt, eos_id=-1, max_new_tokens=steps)
    assert len({tuple(t) for t in full}) > 1, "degenerate model: every row generates the same"
    blind = generate(model, codec.batch(mixed_rows, stage, K, C, with_targets=False, **LAYOUTS["blind"]), -1, steps)
    if stage < K:  # at the all-latent stage the first text step is the answer, blind in both layouts
        assert full != blind
    for i, row in enumerate(mixed_rows):
        alone = codec.batch([row], stage, K, C, with_targets=False, **LAYOUTS["strict"])
        assert generate(model, alone, -1, steps) == [full[i]]
        assert _greedy_reference(model, alone, full[i]) == full[i]


@pytest.mark.parametrize("layout", ["blind", "last-blind", "strict"])
def test_blind_layout_under_eager_attention(mixed_rows, layout):
    """Eager attention adds the mask to the scores: the additive form gives the same logits as sdpa's boolean one."""
    model, tokenizer = make_tiny_model(mixed_rows)
    batch = Codec(tokenizer).batch(mixed_rows, 1, K, C, **LAYOUTS[layout])
    with torch.no_grad():
        sdpa = coconut_forward(model, batch)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        cached, naive = coconut_forward(model, batch), naive_forward(model, batch)
    valid = batch.suffix_mask.bool()
    torch.testing.assert_close(cached.logits[valid], naive.logits[valid], atol=1e-10, rtol=0)
    torch.testing.assert_close(cached.logits[valid], sdpa.logits[valid], atol=1e-10, rtol=0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_remembered_ids_build_the_batches_the_tokenizer_builds(tiny_model, mixed_rows, layout):
    _, tokenizer = tiny_model
    remembering, fresh = Codec(tokenizer), Codec(tokenizer)
    fresh.encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    for stage in range(K + 1):
        first = remembering.batch(mixed_rows, stage, K, C, **LAYOUTS[layout])
        again = remembering.batch(mixed_rows, stage, K, C, **LAYOUTS[layout])
        expected = fresh.batch(mixed_rows, stage, K, C, **LAYOUTS[layout])
        for name, value in vars(expected).items():
            for batch in (first, again):
                got = getattr(batch, name)
                assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, name


def test_the_encoder_tokenizes_a_text_once_and_hands_out_fresh_lists():
    calls = []

    def tokenizer(text, add_special_tokens):
        calls.append(text)
        return {"input_ids": [len(text), int(add_special_tokens)]}
    encode = remembering_encoder(tokenizer)
    assert [encode("12 + 34"), encode("5 + 6"), encode("12 + 34")] == [[7, 0], [5, 0], [7, 0]]
    assert calls == ["12 + 34", "5 + 6"]
    encode("5 + 6").append(-1)  # a caller's change to its list does not reach the next caller
    assert encode("5 + 6") == [5, 0]

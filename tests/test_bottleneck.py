"""The bottleneck at the all-latent stage: with the answer blind to the question, nothing after the thoughts
depends on the question except through the thoughts, not even on its length.

A 2-digit and a 3-digit question (the same steps and answer) are given each other's thoughts: the fed-back
vectors and every block's output at the thought positions (`states`), or every hidden state there, the
embedding layer's (thought plus position embedding) included (`hidden`). The answer's logits, teacher-forced
(cached and naive passes) and in free generation (tokens and logits), must be those of the question whose
thoughts they were given. A pair of questions of the same length checks the free-generation rule on its own.
"""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from cocoracle.coconut import Codec, coconut_forward, generate_with_thoughts, naive_forward
from cocoracle.data import problems_table
from conftest import make_tiny_model

K = 3  # num_stages; the all-latent stage
C = 1  # thoughts_per_step
PAIRS = {"2-3 digits": ((38, 64), (905, 187)), "same length": ((38, 64), (37, 65))}
LAYOUTS = {"blind": {"answer_sees_question": False},
           "last-blind": {"order": "last", "answer_sees_question": False},
           "strict": {"answer_sees_question": False, "steps_see_question": False}}
GENERATED = 8  # tokens generated (no end token)


def _model(noisy: bool):
    """A random tiny model (float64) with positions reserved for questions up to 3 digits; `noisy`: large
    weights, so that greedy generation varies from token to token (and seldom starts with ###)."""
    rows = problems_table([(905, 187), (7, 5)], 0).to_pylist()
    model, tokenizer = make_tiny_model(rows, seed=3 if noisy else 0)
    longest = max(len(Codec(tokenizer).encode(r["question"])) for r in rows)
    model.config.coconut_question_positions = longest  # as reserve_question_positions (`cocoracle train`) sets it
    if noisy:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return model, tokenizer


@pytest.fixture(scope="module")
def plain():
    return _model(noisy=False)


@pytest.fixture(scope="module")
def noisy():
    return _model(noisy=True)


def _batches(tokenizer, pair: str, layout: str, with_targets: bool = True):
    """One-row batches of the pair's two questions, both with the first one's steps and answer."""
    first, second = (problems_table([p], 0).to_pylist()[0] for p in PAIRS[pair])
    rows = [first, {**first, "question": second["question"]}]
    codec = Codec(tokenizer)
    a, b = (codec.batch([r], K, K, C, with_targets=with_targets, **LAYOUTS[layout]) for r in rows)
    assert (a.prefix_ids.shape == b.prefix_ids.shape) == (pair == "same length")
    return a, b


class Swap:
    """Record (`saved` None) or replace, at the thought positions of every model call, what the later positions
    read of the thoughts: the fed-back input vectors and each block's output (`states`), or each block's input
    and output, the embedding layer's sum included (`hidden`).

    `cached`: the calls of latent_prefix (prefix, then thoughts 0..T-2 one per call) and then a call whose first
    column is thought T-1; else naive_forward's calls, of which the last is the full sequence."""

    def __init__(self, model, batch, cached: bool, what: str, saved: dict | None = None):
        self.model, self.cached, self.what = model, cached, what
        self.T, self.P = batch.n_thoughts, batch.prefix_ids.shape[1]
        self.saved, self.record, self.call, self.logits = saved, {}, -1, []

    def columns(self) -> dict[int, int]:
        """{column: thought} of the current call."""
        if self.cached:
            return {0: self.call - 1} if 1 <= self.call <= self.T else {}
        return {self.P + t: t for t in range(self.T)} if self.call == self.T else {}

    def swap(self, key, tensor: torch.Tensor) -> torch.Tensor | None:
        cols = self.columns()
        if not cols:
            return None
        if self.saved is None:
            for col, t in cols.items():
                self.record[(key, t)] = tensor[:, col].clone()
            return None
        tensor = tensor.clone()
        for col, t in cols.items():
            tensor[:, col] = self.saved[(key, t)]
        return tensor

    def model_pre(self, module, args, kwargs):
        self.call += 1
        if self.what == "states":
            embeds = self.swap("input", kwargs["inputs_embeds"])
            if embeds is not None:
                return args, {**kwargs, "inputs_embeds": embeds}
        return None

    def model_post(self, module, args, kwargs, out):
        self.logits.append(out.logits[:, -1].clone())

    def block_pre(self, layer, module, args, kwargs):
        if self.what != "hidden" or layer:
            return None
        hidden = self.swap(("block input", layer), args[0])
        return None if hidden is None else ((hidden, *args[1:]), kwargs)

    def block_post(self, layer, module, args, out):
        tensor = out[0] if isinstance(out, tuple) else out
        swapped = self.swap(("block", layer), tensor)
        if swapped is None:
            return None
        return (swapped, *out[1:]) if isinstance(out, tuple) else swapped

    @contextlib.contextmanager
    def hooked(self):
        handles = [self.model.register_forward_pre_hook(self.model_pre, with_kwargs=True),
                   self.model.register_forward_hook(self.model_post, with_kwargs=True)]
        for i, block in enumerate(self.model.transformer.h):
            handles.append(block.register_forward_pre_hook(functools.partial(self.block_pre, i), with_kwargs=True))
            handles.append(block.register_forward_hook(functools.partial(self.block_post, i)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _forward(path: str):
    return {"cached": coconut_forward, "naive": naive_forward}[path]


@pytest.mark.parametrize("what", ["states", "hidden"])
@pytest.mark.parametrize("path", ["cached", "naive"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS)
def test_teacher_forced_answer_reads_the_question_only_through_the_thoughts(plain, pair, layout, path, what):
    model, tokenizer = plain
    a, b = _batches(tokenizer, pair, layout)
    cached = path == "cached"
    with torch.no_grad():
        with Swap(model, a, cached, what).hooked() as recorded:
            out_a = _forward(path)(model, a)
        with Swap(model, b, cached, what, recorded.record).hooked():
            swapped = _forward(path)(model, b)
        own = _forward(path)(model, b)
    assert len(recorded.record) == K * C * (model.config.n_layer + 1)  # every thought and layer
    torch.testing.assert_close(swapped.logits, out_a.logits, atol=1e-12, rtol=0)
    assert (own.logits - out_a.logits).abs().max() > 1e-6  # the question reaches the answer through the thoughts


@pytest.mark.parametrize("what", ["states", "hidden"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS)
def test_free_generation_reads_the_question_only_through_the_thoughts(noisy, pair, layout, what):
    model, tokenizer = noisy
    a, b = _batches(tokenizer, pair, layout, with_targets=False)
    with torch.no_grad():
        with Swap(model, a, True, what).hooked() as recorded:
            tokens_a, _ = generate_with_thoughts(model, a, -1, GENERATED, return_states=False)
        with Swap(model, b, True, what, recorded.record).hooked() as swapped:
            tokens_b, _ = generate_with_thoughts(model, b, -1, GENERATED, return_states=False)
        with Swap(model, b, True, what).hooked() as own:
            generate_with_thoughts(model, b, -1, GENERATED, return_states=False)
    assert len(tokens_a[0]) == GENERATED and tokens_a[0][0] != a.marker  # not ### first: the rule matters
    assert tokens_b == tokens_a
    generated = slice(K * C, None)  # the calls after the thoughts': <eot>'s, then one per generated token
    wanted = torch.stack(recorded.logits[generated])
    assert wanted.shape[0] == GENERATED
    torch.testing.assert_close(torch.stack(swapped.logits[generated]), wanted, atol=1e-12, rtol=0)
    assert (torch.stack(own.logits[generated]) - wanted).abs().max() > 1e-6  # the question reaches them

"""Coconut (Hao et al. 2024): batched latent passes with a KV cache, loss, and greedy generation.

A batch is laid out as  [left pad | question <bot>] [T thoughts] [<eot> remaining steps ### answer <eos> | right pad],
so every row's thoughts sit in the same columns (order `first`: stage k replaces the first k steps). With order
`last` stage k replaces the last k steps, and the remaining steps are input, before <bot>:
[left pad | question remaining steps <bot>] [T thoughts] [<eot> ### answer <eos> | right pad].
The prefix is one pass, each thought one single-position pass that reuses the cache (its input is the last
layer's final hidden state at the previous position), and the rest one more pass.

Position ids skip the left padding. A model trained by `cocoracle train` reserves ids 0..n-1 for the question
(n: the longest question of the data in tokens, fixed at stage 0 and saved in its config as
`coconut_question_positions`): the question's tokens count from 0, and everything after them (given steps,
<bot>, thoughts, suffix) from n, so no column after the question knows from its position id how long the
question was. A model without the reservation counts on after the question.

With answer_sees_question false the *blind* positions (<eot>, ###, the answer and <eos>) cannot attend to the
question's columns (question tokens and <bot>): they see the thoughts, the text steps and themselves, so at the
all-latent stage the question reaches the answer only through the thoughts. Text steps still see the question,
unless steps_see_question is false too: then wherever a thought precedes them they are blind as well, so at
stage k the thoughts must carry the rest of the question to the text steps (at stage 0, with no thought, they
see it). In greedy generation a generated token is blind from the first `###` token on (a text step before it)
in a row with text steps left to write; in a row with none (the all-latent stage, order `last`), or when the text
steps are blind, from the first on, so that nothing generated there sees the question either.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cocoracle.model import BOT, EOT

IGNORE = -100  # label of a token the loss does not score
NO_TOKEN_LIMIT = 10_000  # max_new_tokens that decodes to the end token (or the end of the position table)
ORDERS = ("first", "last")  # coconut.order: which steps stage k replaces
SEPARATORS = ("after", "before")  # coconut.step_separator: `|` after each text step, or before it
ANSWER_MARK = " ###"  # text between the steps and the answer


def stage_layout(stage: int, num_stages: int, thoughts_per_step: int, n_steps: int) -> tuple[int, int]:
    """(thoughts, steps replaced) at a stage: the first k steps become k*c thoughts; stage K replaces all."""
    replaced = n_steps if stage >= num_stages else min(stage, n_steps)
    return stage * thoughts_per_step, replaced


def thought_steps(stage: int, num_stages: int, thoughts_per_step: int, n_steps: int,
                  order: str = "first") -> list[int | None]:
    """The step each thought stands for, in chain order (None: a thought beyond the replaced steps)."""
    n_thoughts, replaced = stage_layout(stage, num_stages, thoughts_per_step, n_steps)
    start = n_steps - replaced if order == "last" else 0
    return [start + t // thoughts_per_step if t // thoughts_per_step < replaced else None for t in range(n_thoughts)]


def kept_steps(steps: list[str], replaced: int, order: str) -> list[str]:
    """The steps that stay text when `replaced` of them are latent."""
    return steps[:len(steps) - replaced] if order == "last" else steps[replaced:]


def layout_options(coconut: dict[str, Any]) -> dict[str, Any]:
    """Codec.batch's layout keywords from a params `coconut` section (defaults for checkpoints older than them)."""
    return {"order": coconut.get("order", "first"),
            "answer_sees_question": coconut.get("answer_sees_question", True),
            "steps_see_question": coconut.get("steps_see_question", True),
            "separator": coconut.get("step_separator", "after")}


def steps_text(steps: list[str], separator: str) -> str:
    """Text steps joined by `|`: after each ('s1 | s2 |') or before each ('| s1 | s2'); '' for none."""
    return " ".join(f"{s} |" if separator == "after" else f"| {s}" for s in steps)


@dataclass
class CoconutBatch:
    prefix_ids: torch.Tensor   # (B, P) left-padded question + <bot>
    prefix_mask: torch.Tensor  # (B, P)
    n_thoughts: int
    suffix_ids: torch.Tensor   # (B, S) right-padded, starts with <eot>
    suffix_mask: torch.Tensor  # (B, S)
    labels: torch.Tensor       # (B, S) suffix ids that are scored, else IGNORE
    answer_mask: torch.Tensor  # (B, S) answer digits and the end token
    question: torch.Tensor | None = None  # (B, P) bool: question and <bot> columns; None: the answer sees them
    blind: torch.Tensor | None = None     # (B, S) bool: suffix positions that cannot see `question`
    marker: int | None = None             # first token of ###: generated tokens from it on are blind
    steps_blind: bool = False             # the text steps are blind too: every generated token is
    steps_left: torch.Tensor | None = None  # (B,) bool: the row writes text steps after <eot> (else, blind
    #                                         layouts: every token it generates is blind)
    question_length: torch.Tensor | None = None  # (B,) the question's tokens (position ids: see _positions)

    def to(self, device: torch.device) -> CoconutBatch:
        return CoconutBatch(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                               for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass
class CoconutOutput:
    logits: torch.Tensor                 # (B, S, V): logits[:, j] predicts suffix token j+1
    thoughts: torch.Tensor               # (B, T, d): the vectors fed back as thought inputs
    thought_states: tuple[torch.Tensor, ...] | None = None  # per layer (B, T, d), when asked
    finished: torch.Tensor | None = None  # (B,) bool after generation: the row emitted the end token


TEXTS_REMEMBERED = 1 << 17  # distinct texts a codec keeps the ids of (the default's 20000 problems have ~60000)


def remembering_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], list[int]]:
    """The tokenizer's ids of a text (no special tokens), remembered for the last TEXTS_REMEMBERED texts: every
    epoch tokenizes the same problems again, which cost 5-11 % of a training step. A fresh list each call."""
    @functools.lru_cache(maxsize=TEXTS_REMEMBERED)
    def ids(text: str) -> tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return lambda text: list(ids(text))


class Codec:
    """Turns problems into CoconutBatches for a tokenizer (which must not change afterwards: ids are remembered)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.bot, self.eot = tokenizer.convert_tokens_to_ids([BOT, EOT])
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.encode = remembering_encoder(tokenizer)

    def suffix(self, steps: list[str], answer: int, separator: str = "after", steps_blind: bool = False
               ) -> tuple[list[int], list[int], list[int]]:
        """Ids after the thoughts, the mask of answer tokens and the mask of blind tokens (all but the steps,
        or all with steps_blind): <eot> steps ### answer <eos>."""
        head = [self.eot] + self.encode(" " + " ".join(t for t in (steps_text(steps, separator), "###") if t))
        mark = self.encode(ANSWER_MARK)
        if head[-len(mark):] != mark:
            raise ValueError(f"the tokenizer does not split '{ANSWER_MARK}' off the steps")
        tail = self.encode(f" {answer}") + [self.eos]
        blind = [1] + [int(steps_blind)] * (len(head) - 1 - len(mark)) + [1] * (len(mark) + len(tail))
        return head + tail, [0] * len(head) + [1] * len(tail), blind

    def prefix(self, question: str, steps: list[str], separator: str = "after") -> tuple[list[int], list[int]]:
        """Ids before the thoughts (question, given steps, <bot>) and the mask of the question and <bot>."""
        ids = self.encode(question)
        text = self.encode(" " + steps_text(steps, separator)) if steps else []
        return ids + text + [self.bot], [1] * len(ids) + [0] * len(text) + [1]

    def batch(self, rows: list[dict[str, Any]], stage: int, num_stages: int, thoughts_per_step: int,
              with_targets: bool = True, order: str = "first", answer_sees_question: bool = True,
              separator: str = "after", steps_see_question: bool = True) -> CoconutBatch:
        """Left-padded prefixes, thoughts for `stage`, and (with_targets) the gold remaining text.

        order: which steps stage k replaces (`first`, or `last`: the others are given before <bot>);
        answer_sees_question false: the batch carries the masks that hide the question from the answer;
        separator: `|` after each text step, or before it (then the token after <eot> is `|` or `###`,
        whatever the question); steps_see_question false (needs answer_sees_question false): the text steps
        are blind too where a thought precedes them.
        """
        if order not in ORDERS:
            raise ValueError(f"order: one of {', '.join(ORDERS)}, got {order!r}")
        if separator not in SEPARATORS:
            raise ValueError(f"separator: one of {', '.join(SEPARATORS)}, got {separator!r}")
        if answer_sees_question and not steps_see_question:
            raise ValueError("steps_see_question false needs answer_sees_question false")
        steps_blind = not steps_see_question and stage * thoughts_per_step > 0
        prefixes, questions, suffixes, answers, blinds, written = [], [], [], [], [], []
        for row in rows:
            replaced = stage_layout(stage, num_stages, thoughts_per_step, len(row["steps"]))[1]
            kept = kept_steps(row["steps"], replaced, order)
            ids, question = self.prefix(row["question"], kept if order == "last" else [], separator)
            prefixes.append(ids)
            questions.append(question)
            written.append(order == "first" and bool(kept))
            ids, answer, blind = ([self.eot], [0], [1]) if not with_targets else \
                self.suffix(kept if order == "first" else [], row["answer"], separator, steps_blind)
            suffixes.append(ids)
            answers.append(answer)
            blinds.append(blind)
        suffix_ids = _padded(suffixes, self.pad, left=False)
        suffix_mask = _padded([[1] * len(s) for s in suffixes], 0, left=False)
        labels = suffix_ids.masked_fill(suffix_mask == 0, IGNORE)
        labels[:, 0] = IGNORE  # <eot> is given, not predicted
        prefix_mask = _padded([[1] * len(p) for p in prefixes], 0, left=True)
        batch = CoconutBatch(_padded(prefixes, self.pad, left=True), prefix_mask, stage * thoughts_per_step,
                             suffix_ids, suffix_mask, labels, _padded(answers, 0, left=False).bool(),
                             question_length=torch.tensor([sum(q) - 1 for q in questions]))  # less <bot>
        if answer_sees_question:
            return batch
        return replace(batch, question=_padded(questions, 0, left=True).bool(),
                       blind=_padded(blinds, 0, left=False).bool(), marker=self.encode(ANSWER_MARK)[0],
                       steps_blind=steps_blind, steps_left=torch.tensor(written))


def _padded(seqs: list[list[int]], fill: int, left: bool) -> torch.Tensor:
    """(B, longest) long tensor of `seqs`, padded with `fill` on the left or on the right."""
    width = max(map(len, seqs))
    out = np.full((len(seqs), width), fill, dtype=np.int64)
    for i, seq in enumerate(seqs):
        start = width - len(seq) if left else 0
        out[i, start:start + len(seq)] = seq
    return torch.from_numpy(out)


QUESTION_POSITIONS = "coconut_question_positions"  # model.config attribute: position ids reserved for the question


def question_positions(model: PreTrainedModel) -> int | None:
    """The position id the columns after the question start at (None: a model without it, whose positions
    continue after the question)."""
    return getattr(model.config, QUESTION_POSITIONS, None)


def reserve_question_positions(model: PreTrainedModel, codec: Codec, rows: list[dict[str, Any]]) -> int:
    """Reserve position ids 0..n-1 for questions, n the token count of the longest question of `rows`, unless
    the model has a reservation already (kept); the columns after a question then start at n. Returns it."""
    if question_positions(model) is None:
        setattr(model.config, QUESTION_POSITIONS, max(len(codec.encode(r["question"])) for r in rows))
    return question_positions(model)


def _positions(model: PreTrainedModel, batch: CoconutBatch, mask: torch.Tensor) -> torch.Tensor:
    """Position ids of the columns of `mask` (B, n), which start with a row's left-padded prefix: padding is
    skipped, the question's tokens count from 0 and every column after them (given steps, <bot>, thoughts,
    suffix) from question_positions(model), whatever the question's length, so that no position the question
    is hidden from learns the question's length from its position id."""
    counted = (mask.cumsum(-1) - 1).clamp(min=0)
    reserved = question_positions(model)
    if reserved is None or batch.question_length is None:
        return counted
    length = batch.question_length.to(counted.device)[:, None]
    if bool((length > reserved).any()):
        raise ValueError(f"a question of {int(length.max())} tokens, but the model reserves {reserved} positions "
                         "for it")
    return torch.where(counted < length, counted, counted - length + reserved)


def _step(model: PreTrainedModel, embeds, mask, positions, cache):
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, output_hidden_states=True)
    return out.logits, out.hidden_states, out.cache


def _attention(model: PreTrainedModel, batch: CoconutBatch, mask: torch.Tensor, blind: torch.Tensor | None,
               dtype: torch.dtype) -> torch.Tensor:
    """The attention mask of a pass whose queries are the last q columns of `mask` (B, kv): `mask` itself when
    the answer sees the question, else a 4-D causal mask in which `blind` (B, q) queries cannot see the question.

    Every query sees its own column, so that no row (naive_forward's left padding) attends to nothing, which
    some attention kernels turn into NaN.
    """
    if batch.question is None:
        return mask
    kv, q = mask.shape[1], blind.shape[1]
    question = F.pad(batch.question, (0, kv - batch.question.shape[1]))
    keys = torch.arange(kv, device=mask.device)
    queries = torch.arange(kv - q, kv, device=mask.device)[:, None]
    allowed = (keys <= queries) & mask.bool()[:, None] & ~(blind[:, :, None] & question[:, None])
    allowed = (allowed | (keys == queries))[:, None]
    if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def _after_thoughts(batch: CoconutBatch, n_extra: int) -> torch.Tensor | None:
    """(B, n_extra + S) blind flags of a pass over n_extra thought columns and the suffix (None: none is blind)."""
    return None if batch.blind is None else F.pad(batch.blind, (n_extra, 0))


def latent_prefix(model: PreTrainedModel, batch: CoconutBatch, return_states: bool = False):
    """Prefix pass and T-1 single-position thought passes (cached).

    Returns the last thought's input vector (or None when T == 0), the attention mask and next
    position so far, the cache, every fed-back thought vector and per-layer states of thoughts 1..T-1.
    """
    embed = model.get_input_embeddings()
    mask = batch.prefix_mask
    positions = _positions(model, batch, mask)
    _, hidden, cache = _step(model, embed(batch.prefix_ids), mask, positions, None)
    next_pos = positions[:, -1:] + 1
    thoughts, states = [], []
    for t in range(batch.n_thoughts):
        h = hidden[-1][:, -1:]
        thoughts.append(h)
        if t == batch.n_thoughts - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        _, hidden, cache = _step(model, h, mask, next_pos, cache)
        if return_states:
            states.append(hidden)
        next_pos = next_pos + 1
    return (thoughts[-1] if thoughts else None), mask, next_pos, cache, thoughts, states


def coconut_forward(model: PreTrainedModel, batch: CoconutBatch, return_states: bool = False) -> CoconutOutput:
    """Cached Coconut forward over the whole layout; logits over the suffix."""
    embed = model.get_input_embeddings()
    last, mask, next_pos, cache, thoughts, states = latent_prefix(model, batch, return_states)
    rest = embed(batch.suffix_ids)
    rest_mask = batch.suffix_mask
    if last is not None:
        rest = torch.cat([last, rest], dim=1)
        rest_mask = torch.cat([rest_mask.new_ones(rest_mask.shape[0], 1), rest_mask], dim=1)
    mask = torch.cat([mask, rest_mask], dim=1)
    positions = next_pos + torch.arange(rest.shape[1], device=rest.device)
    offset = 1 if last is not None else 0
    attention = _attention(model, batch, mask, _after_thoughts(batch, offset), rest.dtype)
    logits, hidden, _ = _step(model, rest, attention, positions, cache)
    if return_states and last is not None:
        states.append(tuple(h[:, :1] for h in hidden))
    per_layer = tuple(torch.cat(layer, dim=1) for layer in zip(*states, strict=True)) if states else None
    stacked = torch.cat(thoughts, dim=1) if thoughts else rest.new_zeros(rest.shape[0], 0, rest.shape[-1])
    return CoconutOutput(logits[:, offset:], stacked, per_layer)


def naive_forward(model: PreTrainedModel, batch: CoconutBatch,
                  feed: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> CoconutOutput:
    """Reference implementation: recompute the full sequence for every thought, no cache.

    feed(t, h) (tests) gives the vector fed back as thought t instead of the computed h.
    """
    embed = model.get_input_embeddings()
    seq, mask = embed(batch.prefix_ids), batch.prefix_mask
    thoughts = []
    for t in range(batch.n_thoughts):
        positions = _positions(model, batch, mask)
        out = model(inputs_embeds=seq, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        h = out.hidden_states[-1][:, -1:]
        h = feed(t, h) if feed is not None else h
        thoughts.append(h)
        seq = torch.cat([seq, h], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    seq = torch.cat([seq, embed(batch.suffix_ids)], dim=1)
    mask = torch.cat([mask, batch.suffix_mask], dim=1)
    positions = _positions(model, batch, mask)
    # suffix padding sits on the right, so its positions need not continue; only valid ones are compared
    attention = _attention(model, batch, mask, _after_thoughts(batch, mask.shape[1] - batch.suffix_mask.shape[1]),
                           seq.dtype)
    logits = model(inputs_embeds=seq, attention_mask=attention, position_ids=positions).logits
    stacked = torch.cat(thoughts, dim=1) if thoughts else seq.new_zeros(seq.shape[0], 0, seq.shape[-1])
    return CoconutOutput(logits[:, -batch.suffix_ids.shape[1]:], stacked)


def scored_tokens(batch: CoconutBatch) -> int:
    """How many tokens the loss scores."""
    return int((batch.labels[:, 1:] != IGNORE).sum())


def loss_fn(output: CoconutOutput, batch: CoconutBatch, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy on the remaining steps, the answer and the end token: the mean, or the sum divided
    by `normalizer` (data-parallel training divides by the tokens of the whole global batch)."""
    logits = output.logits[:, :-1].float()
    flat = (logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1))
    if normalizer is None:
        return F.cross_entropy(*flat, ignore_index=IGNORE)
    return F.cross_entropy(*flat, ignore_index=IGNORE, reduction="sum") / normalizer


@torch.no_grad()
def teacher_forced_correct(model: PreTrainedModel, batch: CoconutBatch) -> torch.Tensor:
    """(B,) bool: every answer token (and the end token) is the argmax given the gold prefix."""
    preds = coconut_forward(model, batch).logits[:, :-1].argmax(-1)
    wanted = batch.answer_mask[:, 1:]
    hits = (preds == batch.suffix_ids[:, 1:]) | ~wanted
    return hits.all(dim=1)


def append_greedy(token: torch.Tensor, finished: torch.Tensor, out: list[list[int]], eos_id: int) -> bool:
    """Append each unfinished row's token (not the end token), mark rows that ended; True once all have."""
    for row in (~finished).nonzero().flatten().tolist():
        if token[row].item() != eos_id:
            out[row].append(int(token[row]))
    finished |= token == eos_id
    return bool(finished.all())


@torch.no_grad()
def generate(model: PreTrainedModel, batch: CoconutBatch, eos_id: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding after the thoughts and <eot>, batched and cached; ids up to (excluding) eos."""
    return generate_with_thoughts(model, batch, eos_id, max_new_tokens, return_states=False)[0]


@torch.no_grad()
def generate_with_thoughts(model: PreTrainedModel, batch: CoconutBatch, eos_id: int, max_new_tokens: int,
                           return_states: bool = True) -> tuple[list[list[int]], CoconutOutput]:
    """Greedy decoding as `generate`, also returning the thoughts and (return_states) per-layer states
    at every thought position, exactly as the model computed them while answering."""
    embed = model.get_input_embeddings()
    last, mask, next_pos, cache, thoughts, states = latent_prefix(model, batch, return_states)
    B = batch.prefix_ids.shape[0]
    eot = embed(batch.suffix_ids[:, :1])
    inputs = eot if last is None else torch.cat([last, eot], dim=1)
    finished = torch.zeros(B, dtype=torch.bool, device=mask.device)
    # generated tokens are text steps until ### in rows with text steps left, blind from the first in the others
    text = torch.ones(B, 1, dtype=torch.bool, device=mask.device)
    if batch.steps_left is not None:
        text = text & batch.steps_left[:, None]  # a new tensor: `text` changes below, the batch does not
    blind = F.pad(torch.ones_like(text), (inputs.shape[1] - 1, 0))  # the last thought (if any) sees the question
    out: list[list[int]] = [[] for _ in range(B)]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:  # never run past the position table
        max_new_tokens = min(max_new_tokens, limit - int(next_pos.max()) - inputs.shape[1] + 1)
    for i in range(max_new_tokens):
        n = inputs.shape[1]
        mask = torch.cat([mask, mask.new_ones(B, n)], dim=1)
        positions = next_pos + torch.arange(n, device=mask.device)
        logits, hidden, cache = _step(model, inputs, _attention(model, batch, mask, blind, inputs.dtype), positions,
                                      cache)
        if i == 0 and return_states and last is not None:  # the last thought sits first in this pass
            states.append(tuple(h[:, :1] for h in hidden))
        next_pos = positions[:, -1:] + 1
        token = logits[:, -1].argmax(-1)
        if append_greedy(token, finished, out, eos_id):
            break
        inputs = embed(token[:, None])
        if batch.marker is not None:
            text &= token[:, None] != batch.marker
        blind = ~text | batch.steps_blind
    per_layer = tuple(torch.cat(layer, dim=1) for layer in zip(*states, strict=True)) if states else None
    stacked = torch.cat(thoughts, dim=1) if thoughts else inputs.new_zeros(B, 0, inputs.shape[-1])
    return out, CoconutOutput(logits=logits, thoughts=stacked, thought_states=per_layer, finished=finished)

"""Coconut (Hao et al. 2024): batched latent passes with a KV cache, loss, and greedy generation.

A batch is laid out as  [left pad | question <bot>] [T thoughts] [<eot> remaining steps ### answer <eos> | right pad],
so every row's thoughts sit in the same columns. The prefix is one pass, each thought one
single-position pass that reuses the cache (its input is the last layer's final hidden state at the
previous position), and the rest one more pass. Position ids skip the left padding.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cocoracle.model import BOT, EOT

IGNORE = -100  # label of a token the loss does not score
NO_TOKEN_LIMIT = 10_000  # max_new_tokens that decodes to the end token (or the end of the position table)


def stage_layout(stage: int, num_stages: int, thoughts_per_step: int, n_steps: int) -> tuple[int, int]:
    """(thoughts, steps replaced) at a stage: the first k steps become k*c thoughts; stage K replaces all."""
    replaced = n_steps if stage >= num_stages else min(stage, n_steps)
    return stage * thoughts_per_step, replaced


@dataclass
class CoconutBatch:
    prefix_ids: torch.Tensor   # (B, P) left-padded question + <bot>
    prefix_mask: torch.Tensor  # (B, P)
    n_thoughts: int
    suffix_ids: torch.Tensor   # (B, S) right-padded, starts with <eot>
    suffix_mask: torch.Tensor  # (B, S)
    labels: torch.Tensor       # (B, S) suffix ids that are scored, else IGNORE
    answer_mask: torch.Tensor  # (B, S) answer digits and the end token

    def to(self, device: torch.device) -> CoconutBatch:
        return CoconutBatch(**{f.name: (v.to(device) if torch.is_tensor(v) else v)
                               for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass
class CoconutOutput:
    logits: torch.Tensor                 # (B, S, V): logits[:, j] predicts suffix token j+1
    thoughts: torch.Tensor               # (B, T, d): the vectors fed back as thought inputs
    thought_states: tuple[torch.Tensor, ...] | None = None  # per layer (B, T, d), when asked


class Codec:
    """Turns problems into CoconutBatches for a tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.bot, self.eot = tokenizer.convert_tokens_to_ids([BOT, EOT])
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def suffix(self, steps: list[str], answer: int) -> tuple[list[int], list[int]]:
        """Ids after the thoughts and the mask of answer tokens: <eot> steps | ... ### answer <eos>."""
        head = [self.eot] + self.encode(" " + " ".join([*(f"{s} |" for s in steps), "###"]))
        tail = self.encode(f" {answer}") + [self.eos]
        return head + tail, [0] * len(head) + [1] * len(tail)

    def batch(self, rows: list[dict[str, Any]], stage: int, num_stages: int, thoughts_per_step: int,
              with_targets: bool = True) -> CoconutBatch:
        """Left-padded prefixes, thoughts for `stage`, and (with_targets) the gold remaining text."""
        prefixes, suffixes, answers, n_thoughts = [], [], [], None
        for row in rows:
            t, replaced = stage_layout(stage, num_stages, thoughts_per_step, len(row["steps"]))
            n_thoughts = t
            prefixes.append(self.encode(row["question"]) + [self.bot])
            ids, ans = self.suffix(row["steps"][replaced:], row["answer"]) if with_targets else ([self.eot], [0])
            suffixes.append(ids)
            answers.append(ans)
        P, S, B = max(map(len, prefixes)), max(map(len, suffixes)), len(rows)
        prefix_ids = torch.full((B, P), self.pad, dtype=torch.long)
        prefix_mask = torch.zeros((B, P), dtype=torch.long)
        suffix_ids = torch.full((B, S), self.pad, dtype=torch.long)
        suffix_mask = torch.zeros((B, S), dtype=torch.long)
        answer_mask = torch.zeros((B, S), dtype=torch.bool)
        for i, (p, s, a) in enumerate(zip(prefixes, suffixes, answers, strict=True)):
            prefix_ids[i, P - len(p):] = torch.tensor(p)
            prefix_mask[i, P - len(p):] = 1
            suffix_ids[i, :len(s)] = torch.tensor(s)
            suffix_mask[i, :len(s)] = 1
            answer_mask[i, :len(a)] = torch.tensor(a, dtype=torch.bool)
        labels = suffix_ids.masked_fill(suffix_mask == 0, IGNORE)
        labels[:, 0] = IGNORE  # <eot> is given, not predicted
        return CoconutBatch(prefix_ids, prefix_mask, n_thoughts or 0, suffix_ids, suffix_mask, labels, answer_mask)


def _step(model: PreTrainedModel, embeds, mask, positions, cache):
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, output_hidden_states=True)
    return out.logits, out.hidden_states, out.cache


def latent_prefix(model: PreTrainedModel, batch: CoconutBatch, return_states: bool = False):
    """Prefix pass and T-1 single-position thought passes (cached).

    Returns the last thought's input vector (or None when T == 0), the attention mask and next
    position so far, the cache, every fed-back thought vector and per-layer states of thoughts 1..T-1.
    """
    embed = model.get_input_embeddings()
    mask = batch.prefix_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
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
    logits, hidden, _ = _step(model, rest, mask, positions, cache)
    offset = 1 if last is not None else 0
    if return_states and last is not None:
        states.append(tuple(h[:, :1] for h in hidden))
    per_layer = tuple(torch.cat(layer, dim=1) for layer in zip(*states, strict=True)) if states else None
    stacked = torch.cat(thoughts, dim=1) if thoughts else rest.new_zeros(rest.shape[0], 0, rest.shape[-1])
    return CoconutOutput(logits[:, offset:], stacked, per_layer)


def naive_forward(model: PreTrainedModel, batch: CoconutBatch) -> CoconutOutput:
    """Reference implementation: recompute the full sequence for every thought, no cache."""
    embed = model.get_input_embeddings()
    seq, mask = embed(batch.prefix_ids), batch.prefix_mask
    thoughts = []
    for _ in range(batch.n_thoughts):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(inputs_embeds=seq, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        h = out.hidden_states[-1][:, -1:]
        thoughts.append(h)
        seq = torch.cat([seq, h], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    seq = torch.cat([seq, embed(batch.suffix_ids)], dim=1)
    mask = torch.cat([mask, batch.suffix_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # suffix padding sits on the right, so its positions need not continue; only valid ones are compared
    logits = model(inputs_embeds=seq, attention_mask=mask, position_ids=positions).logits
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
    out: list[list[int]] = [[] for _ in range(B)]
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None:  # never run past the position table
        max_new_tokens = min(max_new_tokens, limit - int(next_pos.max()) - inputs.shape[1] + 1)
    for i in range(max_new_tokens):
        n = inputs.shape[1]
        mask = torch.cat([mask, mask.new_ones(B, n)], dim=1)
        positions = next_pos + torch.arange(n, device=mask.device)
        logits, hidden, cache = _step(model, inputs, mask, positions, cache)
        if i == 0 and return_states and last is not None:  # the last thought sits first in this pass
            states.append(tuple(h[:, :1] for h in hidden))
        next_pos = positions[:, -1:] + 1
        token = logits[:, -1].argmax(-1)
        if append_greedy(token, finished, out, eos_id):
            break
        inputs = embed(token[:, None])
    per_layer = tuple(torch.cat(layer, dim=1) for layer in zip(*states, strict=True)) if states else None
    stacked = torch.cat(thoughts, dim=1) if thoughts else inputs.new_zeros(B, 0, inputs.shape[-1])
    return out, CoconutOutput(logits=logits, thoughts=stacked, thought_states=per_layer)

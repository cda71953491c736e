"""Oracle examples from an activation cache: (activation, question, target) items and their token batches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import IGNORE, remembering_encoder
from cocoracle.config import InputError
from cocoracle.oracle.questions import ACT, TEMPLATES, prompt, target


def build_items(cache: ActivationCache, tasks: list[str], layer: int, rng: np.random.Generator) -> pd.DataFrame:
    """One item per (thought that replaced a step, task): cache row, thought, task, prompt and target.

    Each item's question is drawn uniformly from its task's templates.
    """
    rows = cache.index[cache.index["step"].notna()].reset_index(drop=True)  # thoughts (answer-pass rows have none)
    items = []
    for task in tasks:
        templates = TEMPLATES[task]
        choice = rng.integers(0, len(templates), len(rows))
        for row, pick in zip(rows.to_dict("records"), choice, strict=True):
            items.append({"row": row["row"], "problem_id": row["problem_id"], "thought": int(row["thought"]),
                          "task": task, "prompt": prompt(layer, templates[pick]), "target": target(task, row)})
    return pd.DataFrame(items, columns=["row", "problem_id", "thought", "task", "prompt", "target"])


def item_vectors(cache: ActivationCache, items: pd.DataFrame, layer: int) -> torch.Tensor:
    """(len(items), d) float32: the cached activation at `layer` for every item (rows may repeat)."""
    name = f"layer_{layer}"
    if name not in cache.tensors:
        raise InputError(f"oracle.source_layer: layer {layer} is not in {cache.path} (has {', '.join(cache.tensors)})")
    unique = np.unique(items["row"].to_numpy())
    table = cache.load(name, unique)
    return torch.from_numpy(table[np.searchsorted(unique, items["row"].to_numpy())])


@dataclass
class OracleBatch:
    input_ids: torch.Tensor       # (B, S)
    attention_mask: torch.Tensor  # (B, S)
    position_ids: torch.Tensor    # (B, S)
    act_mask: torch.Tensor        # (B, S) True at the placeholder
    labels: torch.Tensor | None   # (B, S) target tokens and the end token, else IGNORE

    def to(self, device: torch.device) -> OracleBatch:
        return OracleBatch(*(t.to(device) if t is not None else None for t in
                             (self.input_ids, self.attention_mask, self.position_ids, self.act_mask, self.labels)))


class OracleCodec:
    """Tokenizes oracle prompts (left-padded, for generation) and prompt + target (for training); the tokenizer
    must not change afterwards (ids are remembered)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.act = tokenizer.convert_tokens_to_ids(ACT)
        if self.act is None or self.act == tokenizer.unk_token_id:
            raise InputError(f"oracle tokenizer has no {ACT} token")
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.encode = remembering_encoder(tokenizer)

    def batch(self, prompts: list[str], targets: list[str] | None = None) -> OracleBatch:
        """Left-padded prompts, followed (targets given) by target + end token scored as labels."""
        heads = [self.encode(p) for p in prompts]
        tails = [self.encode(" " + t) + [self.eos] for t in targets] if targets is not None else [[] for _ in heads]
        P, T, B = max(map(len, heads)), max(map(len, tails)), len(heads)
        ids = np.full((B, P + T), self.pad, dtype=np.int64)
        mask = np.zeros((B, P + T), dtype=np.int64)
        labels = np.full((B, P + T), IGNORE, dtype=np.int64)
        for i, (head, tail) in enumerate(zip(heads, tails, strict=True)):
            ids[i, P - len(head):P + len(tail)] = head + tail
            mask[i, P - len(head):P + len(tail)] = 1
            labels[i, P:P + len(tail)] = tail
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return OracleBatch(ids, mask, positions, ids == self.act,
                           torch.from_numpy(labels) if targets is not None else None)

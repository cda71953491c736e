"""Scoring an oracle's answer against its target: exact match, exact match up to operand order, multiset token
F1, F1 over the numbers alone.

Texts are compared as tokens: numbers (digits joined, whatever spacing a tokenizer's decoder put between
them) and runs of other non-space characters, so '7+5=12 write 2' and '7 + 5 = 1 2 write 2' agree.

exact_match_any_order, the one lenient metric (fixed before any result was seen): where the target lists
two operands, 'x + y' (the tasks problem and operands), the answer 'y + x' also counts; for every other
target it equals exact_match. It separates "the thought holds both numbers" from "and knows which is first".
"""
from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"\d+|[^\s\d]+")
METRICS = ("exact_match", "exact_match_any_order", "token_f1", "number_f1")
EXACT_METRICS = METRICS[:2]  # proportions (Wilson intervals); the others are means (bootstrap intervals)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(re.sub(r"(?<=\d)\s+(?=\d)", "", text))


def multiset_f1(predicted: list[str], gold: list[str]) -> float:
    """F1 over multisets: a repeated token counts as often as it occurs in both."""
    if not predicted and not gold:
        return 1.0
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def operand_swap(gold: list[str]) -> list[str] | None:
    """['y', '+', 'x'] for a target 'x + y' of two numbers, else None."""
    if len(gold) == 3 and gold[1] == "+" and gold[0].isdigit() and gold[2].isdigit():
        return [gold[2], "+", gold[0]]
    return None


def score(predicted: str, gold: str) -> dict[str, float]:
    """Every metric (METRICS) of one answer."""
    p, g = tokens(predicted), tokens(gold)
    return {"exact_match": float(p == g), "exact_match_any_order": float(p == g or p == operand_swap(g)),
            "token_f1": multiset_f1(p, g),
            "number_f1": multiset_f1([t for t in p if t.isdigit()], [t for t in g if t.isdigit()])}

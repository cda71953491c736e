"""Scoring an oracle's answer against its target: exact match, multiset token F1, F1 over the numbers alone.

Texts are compared as tokens: numbers (digits joined, whatever spacing a tokenizer's decoder put between
them) and runs of other non-space characters, so '7+5=12 write 2' and '7 + 5 = 1 2 write 2' agree.
"""
from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"\d+|[^\s\d]+")


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


def score(predicted: str, gold: str) -> dict[str, float]:
    """exact_match, token_f1 and number_f1 of one answer."""
    p, g = tokens(predicted), tokens(gold)
    return {"exact_match": float(p == g), "token_f1": multiset_f1(p, g),
            "number_f1": multiset_f1([t for t in p if t.isdigit()], [t for t in g if t.isdigit()])}

"""Oracle answer scoring on hand-made cases."""
from __future__ import annotations

import pytest

from cocoracle.oracle.metrics import multiset_f1, score, tokens


def test_tokens_join_digits_whatever_the_decoder_spacing():
    assert tokens("7 + 5 = 1 2 write 2 carry 1") == ["7", "+", "5", "=", "12", "write", "2", "carry", "1"]
    assert tokens("7+5=12 write 2 carry 1") == tokens("7 + 5 = 1 2 write 2 carry 1")


def test_exact_match():
    assert score("7+5=12 write 2 carry 1", "7 + 5 = 1 2 write 2 carry 1")["exact_match"] == 1.0
    assert score("7+5=12 write 2", "7+5=12 write 2 carry 1")["exact_match"] == 0.0
    assert score("", "3")["exact_match"] == 0.0


def test_multiset_f1_counts_repeats():
    # predicted has "1" twice, gold once: common = {1: 1} -> precision 1/2, recall 1/1
    assert multiset_f1(["1", "1"], ["1"]) == pytest.approx(2 / 3)
    assert multiset_f1(["a", "b"], ["b", "a"]) == 1.0
    assert multiset_f1([], []) == 1.0 and multiset_f1(["a"], []) == 0.0


def test_number_f1_ignores_template_words():
    gold = "7+5=12 write 2 carry 1"
    wrong_numbers = "3+4=8 write 8"  # shares no number with gold, only the word "write", "+" and "="
    result = score(wrong_numbers, gold)
    assert result["number_f1"] == 0.0
    assert 0.0 < result["token_f1"] < 1.0
    partial = score("7+5=13 write 3 carry 1", gold)  # numbers 7 5 13 3 1 vs 7 5 12 2 1: 3 of 5 shared
    assert partial["number_f1"] == pytest.approx(0.6)

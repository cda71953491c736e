"""Oracle answer scoring on hand-made cases, and its aggregation: the operand-order-free exact match, every
condition with every metric and its interval, the paired difference against the best baseline, and a flat
numeric summary."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cocoracle.oracle.evaluate import COLUMNS, CONDITIONS, INTERVALS, aggregate, summary
from cocoracle.oracle.metrics import METRICS, multiset_f1, score, tokens
from cocoracle.oracle.questions import target
from cocoracle.stats import bootstrap, paired_difference, wilson

N_PROBLEMS = 60


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



@pytest.mark.parametrize(("predicted", "gold", "strict", "any_order"), [
    ("85 + 47", "47 + 85", 0.0, 1.0),
    ("4 7 + 8 5", "47 + 85", 1.0, 1.0),
    ("5 + 7", "7 + 5", 0.0, 1.0),
    ("21", "12", 0.0, 0.0),
    ("5+7=12 write 2", "7+5=12 write 2", 0.0, 0.0),  # a step is not a list of two operands
    ("47 + 86", "47 + 85", 0.0, 0.0),
])
def test_exact_match_any_order_forgives_only_swapped_operands(predicted, gold, strict, any_order):
    scores = score(predicted, gold)
    assert set(scores) == set(METRICS)
    assert (scores["exact_match"], scores["exact_match_any_order"]) == (strict, any_order)


def test_operand_digit_targets_come_from_the_index_columns():
    row = {"a_digit": 7.0, "b_digit": 5.0}  # index columns may be floats
    assert [target(t, row) for t in ("a_digit", "b_digit", "operands")] == ["7", "5", "7 + 5"]


def _scored(exact: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """One oracle, one task, two thoughts per problem; exact match per condition as given, F1s random."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"row": np.arange(2 * N_PROBLEMS), "problem_id": np.repeat(np.arange(N_PROBLEMS), 2),
                          "thought": np.tile([0, 1], N_PROBLEMS), "task": "digit"})
    frames = [items.assign(oracle="self", condition=c, exact_match=exact[c], exact_match_any_order=exact[c],
                           token_f1=rng.random(len(items)), number_f1=rng.random(len(items))) for c in CONDITIONS]
    return pd.concat(frames, ignore_index=True)


def _exact() -> dict[str, np.ndarray]:
    n = 2 * N_PROBLEMS
    half = np.tile([1.0, 0.0], N_PROBLEMS)  # right at thought 0, wrong at thought 1
    return {"oracle": np.ones(n), "shuffled": half, "random": np.zeros(n), "no_injection": np.zeros(n),
            "majority": half[::-1].copy(), "majority_per_position": np.r_[np.ones(10), np.zeros(n - 10)]}


def test_every_condition_gets_every_metric_and_interval():
    scored = _scored(_exact())
    table = aggregate(scored, stage=2)
    assert list(table.columns) == COLUMNS and (table["stage"] == 2).all()
    assert len(table) == len(CONDITIONS) * 3  # thoughts 0, 1 and all
    assert table[[*METRICS, *INTERVALS]].notna().all().all()
    for m in METRICS:
        assert (table[f"{m}_low"] <= table[m] + 1e-12).all() and (table[m] <= table[f"{m}_high"] + 1e-12).all()
    cell = table[(table["condition"] == "majority_per_position") & (table["thought"] == "all")].iloc[0]
    assert cell["n"] == 2 * N_PROBLEMS
    items = scored[scored["condition"] == "majority_per_position"]
    problems = items["problem_id"].to_numpy()
    # over all thoughts each problem gives two items: every interval resamples problems
    assert cell["interval"] == "cluster bootstrap"
    assert (cell["exact_match_low"], cell["exact_match_high"]) == \
        pytest.approx(bootstrap(items["exact_match"].to_numpy(), problems))
    grouped = bootstrap(items["token_f1"].to_numpy(), problems)
    assert (cell["token_f1_low"], cell["token_f1_high"]) == pytest.approx(grouped)  # resampled by problem
    first = table[(table["condition"] == "majority_per_position") & (table["thought"] == "0")].iloc[0]
    assert first["interval"] == "wilson"  # one item per problem at one thought
    assert (first["exact_match_low"], first["exact_match_high"]) == wilson(5, N_PROBLEMS)


def test_items_alike_within_problems_widen_the_pooled_interval_but_not_a_thoughts():
    """Both thoughts of a problem are read alike: pooled, they are N_PROBLEMS independent items, not twice that.
    The interval over all thoughts resamples problems and is wider than Wilson's over the pooled items (by about
    sqrt(2)); at one thought the items are one per problem and keep Wilson's interval."""
    right = np.repeat((np.random.default_rng(3).random(N_PROBLEMS) < 0.5).astype(float), 2)
    table = aggregate(_scored({c: right for c in CONDITIONS}), stage=2).set_index(["condition", "thought"])
    pooled, one = table.loc[("oracle", "all")], table.loc[("oracle", "1")]
    naive = wilson(round(right.sum()), len(right))
    assert pooled["interval"] == "cluster bootstrap"
    assert pooled["exact_match_high"] - pooled["exact_match_low"] > 1.2 * (naive[1] - naive[0])
    assert one["interval"] == "wilson"
    assert (one["exact_match_low"], one["exact_match_high"]) == wilson(round(right[1::2].sum()), N_PROBLEMS)


def test_difference_is_paired_against_the_best_baseline_of_each_cell():
    scored = _scored(_exact())
    table = aggregate(scored, stage=2).set_index(["condition", "thought"])
    overall = table.loc[("oracle", "all")]
    assert overall["exact_match_best_baseline"] == "shuffled"  # ties with majority: the earlier condition wins
    items = scored[scored["condition"].isin(["oracle", "shuffled"])].pivot(index="row", columns="condition")
    expected = paired_difference(items["exact_match"]["oracle"], items["exact_match"]["shuffled"],
                                 items["problem_id"]["oracle"])
    assert (overall["exact_match_diff"], overall["exact_match_diff_low"], overall["exact_match_diff_high"]) \
        == pytest.approx(expected)
    assert overall["exact_match_diff"] == pytest.approx(0.5) and overall["exact_match_diff_low"] > 0
    first = table.loc[("oracle", "0")]  # at thought 0, shuffled is always right: no difference
    assert first["exact_match_diff"] == 0 and first["exact_match_diff_high"] == 0
    assert table.loc[("oracle", "1"), "exact_match_best_baseline"] == "majority"
    assert table.drop(index="oracle", level="condition")["exact_match_diff"].isna().all()


def test_summary_is_flat_and_numeric_but_for_the_baseline_name():
    table = aggregate(_scored(_exact()), stage=2)
    out = summary(table, 2, {"before": 0.9, "after": 0.8},
                  {"self": {"selected_step": 40, "selected_val_exact_match": 0.7, "curve": {"40": 0.7}}}, {"self": 3})
    assert set(out) == {"stage", "self_answer_accuracy", "self"}
    assert out["self"]["selected_step"] == 40 and out["self"]["selected_val_exact_match"] == 0.7
    assert out["self"]["source_tensor"] == "layer_3"  # the cache tensor the oracle reads, named as the probes name it
    digit = out["self"]["digit"]
    assert digit["best_baseline"] == "shuffled" and digit["best_baseline_exact_match"] == 0.5
    assert digit["n"] == 2 * N_PROBLEMS and digit["exact_match"] == 1.0
    assert digit["interval"] == "cluster bootstrap"  # the kind of the exact matches' intervals
    numbers = {k: v for k, v in digit.items() if k not in ("best_baseline", "interval")}
    assert all(isinstance(v, int | float) for v in numbers.values())
    assert {*METRICS, *INTERVALS, "exact_match_diff", "number_f1_diff_low", "best_baseline_exact_match_high"} \
        <= set(numbers)
    table = table.set_index(["oracle", "condition", "task", "thought"])
    for thought in ("0", "1"):  # per position: the oracle beside the best baseline of that position
        cell = out["self"]["by_thought"]["digit"][thought]
        assert cell["exact_match"] == table.loc[("self", "oracle", "digit", thought), "exact_match"]
        assert cell["n"] == N_PROBLEMS
        assert cell["exact_match_low"] < cell["exact_match"] <= cell["exact_match_high"] + 1e-12
        assert cell["interval"] == "wilson"
    assert out["self"]["by_thought"]["digit"]["0"]["best_baseline"] == "shuffled"  # always right at thought 0
    assert out["self"]["by_thought"]["digit"]["1"]["best_baseline"] == "majority"

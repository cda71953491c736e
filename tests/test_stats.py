"""Intervals: Wilson against known values, the bootstrap's coverage and its grouping."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cocoracle.stats import bootstrap, format_interval, paired_difference, proportion, resamples, wilson


def test_wilson_matches_the_closed_form_and_stays_inside_0_1():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson's interval for 8/10 (Newcombe 1998)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for seed in range(200):
        sample = rng.random(100) < 0.3
        low, high = bootstrap(sample, seed=seed, draws=500)
        hits += low <= 0.3 <= high
    assert 0.88 <= hits / 200 <= 0.99


def test_grouped_bootstrap_is_wider_when_items_of_a_problem_agree():
    rng = np.random.default_rng(2)
    per_problem = rng.random(50) < 0.5
    values = np.repeat(per_problem, 4)  # four identical items per problem
    groups = np.repeat(np.arange(50), 4)
    naive, grouped = bootstrap(values), bootstrap(values, groups)
    assert grouped[1] - grouped[0] > 1.5 * (naive[1] - naive[0])


def test_paired_difference_and_formatting():
    a, b = np.array([1, 1, 0, 1] * 25), np.array([0, 1, 0, 0] * 25)
    diff, low, high = paired_difference(a, b)
    assert diff == pytest.approx(0.5) and low < 0.5 < high
    assert format_interval(0.5, 0.25, 0.75) == "50.0 % [25.0, 75.0]"
    assert format_interval(math.nan, 0, 0) == "n/a"


def test_shared_resamples_give_the_intervals_of_fresh_draws():
    """The resample indices drawn once per group count give exactly the interval of drawing them per call."""
    rng = np.random.default_rng(3)
    for n_groups in (7, 300, 70_000):  # indices stored as uint8, uint16 and uint32
        values, groups = rng.random(2 * n_groups), np.repeat(np.arange(n_groups), 2)
        sums, counts = np.bincount(groups, values), np.bincount(groups)
        picks = np.random.default_rng(0).integers(0, n_groups, (50, n_groups))
        fresh = np.quantile(sums[picks].sum(1) / counts[picks].sum(1), [0.025, 0.975])
        for _ in range(2):  # the second call reuses the first one's draws
            assert bootstrap(values, groups, draws=50) == tuple(fresh)
    assert resamples.cache_info().hits >= 3
    with pytest.raises(ValueError):
        resamples(7, 0, 50)[0, 0] = 1  # shared, so read-only


def test_a_proportion_gets_wilson_over_one_item_per_problem_and_a_bootstrap_over_several():
    """Each problem's three items alike: Wilson over the 600 pooled items would be too narrow (by sqrt(3)); the
    interval resamples the 200 problems instead, and says so."""
    right = (np.random.default_rng(1).random(200) < 0.3).astype(float)
    low, high, kind = proportion(right, np.arange(200))
    assert kind == "wilson" and (low, high) == wilson(int(right.sum()), 200)
    pooled = np.repeat(right, 3)
    low, high, kind = proportion(pooled, np.repeat(np.arange(200), 3))
    assert kind == "cluster bootstrap" and (low, high) == bootstrap(pooled, np.repeat(np.arange(200), 3))
    naive = wilson(int(pooled.sum()), 600)
    assert 1.5 < (high - low) / (naive[1] - naive[0]) < 2.0
    # all wrong: no resample differs, so the interval over problems is Wilson's over the 200 problems, not [0, 0]
    low, high, kind = proportion(np.zeros(600), np.repeat(np.arange(200), 3))
    assert kind == "cluster bootstrap" and (low, high) == wilson(0, 200)

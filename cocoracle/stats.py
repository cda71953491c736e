"""95 % intervals for the report's figures: Wilson for a proportion over items that are one per problem, a
percentile bootstrap over problems (a cluster bootstrap) for a proportion that pools several items per problem
(e.g. every thought of a problem), and a paired bootstrap over problems for means and differences (items of one
problem move together, so correlated items do not narrow the interval)."""
from __future__ import annotations

import functools
import math

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_DRAWS = 2000
WILSON = "wilson"  # the kinds of interval a proportion gets (`interval` in the tables and JSON)
CLUSTER_BOOTSTRAP = "cluster bootstrap"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of successes / n; (nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(values: np.ndarray, groups: np.ndarray | None = None, seed: int = 0,
              draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float]:
    """Percentile 95 % interval of the mean of `values`, resampling whole groups (e.g. problem ids)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return math.nan, math.nan
    keys = np.arange(len(values)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    sums, counts = np.bincount(keys, values), np.bincount(keys)
    picks = resamples(len(sums), seed, draws)
    means = sums[picks].sum(1) / counts[picks].sum(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def interval_kind(groups: np.ndarray) -> str:
    """WILSON when every group (problem) gives at most one item, else CLUSTER_BOOTSTRAP."""
    groups = np.asarray(groups)
    return WILSON if len(np.unique(groups)) == len(groups) else CLUSTER_BOOTSTRAP


def proportion(hits: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[float, float, str]:
    """95 % interval of the share of hits (1/0 per item) and its kind: Wilson where each problem (`groups`) gives
    one item; where some give several, a percentile bootstrap resampling whole problems, as Wilson's interval over
    the pooled items would treat correlated items as independent and be too narrow (where every item is 0, or
    every item 1, no resample differs, and the interval is Wilson's over the problems instead)."""
    hits = np.asarray(hits, dtype=float)
    kind = interval_kind(groups)
    if kind == WILSON:
        return (*wilson(round(hits.sum()), len(hits)), kind)
    if hits.min() == hits.max():  # every resample is all 0 (or all 1): the percentile interval would be [p, p]
        problems = len(np.unique(np.asarray(groups)))  # Wilson's over the problems, each one item of that value
        return (*wilson(round(hits[0]) * problems, problems), kind)
    return (*bootstrap(hits, groups, seed), kind)


@functools.lru_cache(maxsize=4)
def resamples(n_groups: int, seed: int, draws: int) -> np.ndarray:
    """(draws, n_groups) read-only group indices of every bootstrap resample. Drawn once per group count and
    shared: the oracle table asks for hundreds of intervals over the same problems, and drawing the indices was
    most of each one's time. Stored in the smallest integer type that holds them."""
    picks = np.random.default_rng(seed).integers(0, n_groups, (draws, n_groups))
    picks = picks.astype(np.min_scalar_type(n_groups - 1))
    picks.flags.writeable = False
    return picks


def paired_difference(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
                      ) -> tuple[float, float, float]:
    """mean(a) - mean(b) on the same items, and its bootstrap 95 % interval."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap(diff, groups, seed)
    return float(diff.mean()) if len(diff) else math.nan, low, high


def format_interval(value: float, low: float, high: float, percent: bool = True) -> str:
    """'71.2 % [68.3, 74.0]' (or '0.712 [0.683, 0.740]')."""
    if math.isnan(value):
        return "n/a"
    if percent:
        return f"{100 * value:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"

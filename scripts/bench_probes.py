"""Probe fitting: the step's way (one standardisation per unit, warm starts along the C grid, units in parallel over
the threads) against the way before it (a fresh StandardScaler + LogisticRegression pipeline per C, one unit after
another), on the same activation caches, side by side in one run.

Prints seconds for each, the ratio, the largest difference of val and test accuracy over every probe, and each
probe outside the issue's 0.01 with whether each way's fit converged before max_iter.
The way before runs with BLAS on one thread (--before-threads), its fastest setting on the 2-core machine: with
BLAS on both cores its many small products run about ten times slower, which would flatter the step's way.
Usage: python scripts/bench_probes.py [--params params.yaml] [--cache results/seed-0/activations] [--stage 3]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from figures import figure
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cocoracle.cache_reader import ActivationCache
from cocoracle.config import load_params
from cocoracle.probes import CONSTANT, SPLITS, _fit_unit, label_splits, positions, probed_rows, step_targets

TOLERANCE = 0.01  # the issue's: the same accuracies within 0.01 per probe


def fit_before(train, val, test, c_grid: list[float], max_iter: int) -> dict[str, float] | None:
    """The probe as fitted before: a fresh pipeline per C, C chosen on val (first best), scored on test."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = train, val, test
    if len(np.unique(y_tr)) < 2 or not len(y_va) or not len(y_te):
        return None
    best, best_score = None, -1.0
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # as the probe step: max_iter is a setting
            model.fit(x_tr, y_tr)
        score = model.score(x_va, y_va)
        if score > best_score:
            best, best_score = model, score
    return {"accuracy": float(best.score(x_te, y_te)), "val_accuracy": float(best_score),
            "converged": bool(best[-1].n_iter_.max() < max_iter)}


def units(caches: dict[str, ActivationCache], probes: dict) -> list[tuple[tuple, dict]]:
    """Every (tensor, position) with its loaded activations and targets, as the probe step loads them."""
    index = caches["train"].index
    n_steps = int(index["n_steps"].max())
    out = []
    for tensor in caches["train"].tensors:
        for pos in positions(index):
            data = {}
            for split, cache in caches.items():
                rows = probed_rows(cache.index)
                rows = rows[(rows["position"] == pos[0]) & (rows["offset"] == pos[1])].sort_values("row")
                targets = {("step", s, label): y for (s, label), y in
                           step_targets(rows, n_steps, probes["step_labels"]).items()}
                if pos[0] == "thought":
                    targets |= {("own", None, label): rows[label].to_numpy(dtype=float) for label in probes["labels"]}
                data[split] = (cache.load(tensor, rows["row"].to_numpy()), targets)
            out.append(((tensor, pos), data))
    return out


def cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--params, --cache and --stage: which run's caches of which stage are probed."""
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--cache", default="results/seed-0/activations",
                        help="directory of stage-K/{train,val,test}")
    parser.add_argument("--stage", type=int, default=3)
    return parser


def load_units(args: argparse.Namespace) -> tuple[dict, list[tuple[tuple, dict]]]:
    """The params' probes section and every unit of the stage's caches named by cache_arguments."""
    probes = load_params(args.params)["probes"]
    caches = {s: ActivationCache(f"{args.cache}/stage-{args.stage}/{s}") for s in SPLITS}
    return probes, units(caches, probes)


def main() -> None:
    parser = cache_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--before-threads", type=int, default=1, help="BLAS threads of the way before (0: all)")
    args = parser.parse_args()
    probes, work = load_units(args)
    threads = torch.get_num_threads()

    start = time.perf_counter()
    before = {}
    with threadpool_limits(limits=args.before_threads or None):
        for key, data in work:
            for target in data["train"][1]:
                fitted = fit_before(*label_splits(data, target), probes["C_grid"], probes["max_iter"])
                if fitted is not None:
                    before[key, target] = fitted
    seconds_before = time.perf_counter() - start

    from joblib import Parallel, delayed
    start = time.perf_counter()
    results = Parallel(n_jobs=threads)(delayed(_fit_unit)(data, probes) for _, data in work)
    seconds_now = time.perf_counter() - start
    now = {(key, target): fitted for (key, _), fits in zip(work, results, strict=True) for target, fitted in fits
           if not fitted.get(CONSTANT)}  # a label constant in train: the step records it without a probe

    print(f"stage {args.stage}: {len(work)} (tensor, position) units, {len(now)} probes, C grid {probes['C_grid']}, "
          f"{threads} threads")
    print(f"before (fresh pipeline per C, one unit after another, BLAS threads {args.before_threads or threads}): "
          f"{seconds_before:.1f} s")
    print(f"now (warm starts along C, units in parallel): {seconds_now:.1f} s", flush=True)
    if now.keys() != before.keys():
        raise SystemExit(f"the two ways fitted different probes: {sorted(now.keys() ^ before.keys())[:5]}")
    test = max(abs(now[k]["accuracy"] - before[k]["accuracy"]) for k in now)
    val = max(abs(now[k]["val_accuracy"] - before[k]["val_accuracy"]) for k in now)
    print(f"speed-up {seconds_before / seconds_now:.2f}x; largest accuracy difference: test {test:.4f}, val {val:.4f}")
    figure(f"probes, stage {args.stage}: speed-up over a pipeline per C", seconds_before / seconds_now, "x", at_least=5)
    report_differences(now, before, TOLERANCE)


def report_differences(now: dict, before: dict, tolerance: float) -> None:
    """Every probe whose test or val accuracy differs by more than tolerance, with whether each way's chosen fit
    converged before max_iter; then the counts of fits that stopped at max_iter in each way."""
    outside = [k for k in now if max(abs(now[k][m] - before[k][m]) for m in ("accuracy", "val_accuracy")) > tolerance]
    print(f"{len(outside)} of {len(now)} probes differ by more than {tolerance} (test or val accuracy):")
    figure(f"probes differing by more than {tolerance}", len(outside), at_most=0)
    for key in sorted(outside, key=str):
        a, b = now[key], before[key]
        print(f"  {key}: test {a['accuracy']:.4f} vs {b['accuracy']:.4f}, val {a['val_accuracy']:.4f} vs "
              f"{b['val_accuracy']:.4f}, converged now {a['converged']} before {b['converged']}")
    for name, fits in (("now", now), ("before", before)):
        stopped = sum(not f["converged"] for f in fits.values())
        print(f"{name}: {stopped} of {len(fits)} chosen fits stopped at max_iter")


if __name__ == "__main__":
    main()

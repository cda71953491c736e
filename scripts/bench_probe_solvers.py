"""Probe fitting with each of scikit-learn's logistic-regression solvers, side by side on the same units.

Every distinct label vector of every --every-th (tensor, position) unit of one stage's caches is fitted by the probe
step's fit (one standardisation, warm starts along the C grid, C chosen on val) once per solver, the solvers
taking turns on each label, BLAS on one thread (as in the step's workers). Prints per solver the seconds, the ratio
to the step's solver, the largest val and test accuracy difference to it, how many probes differ by more than the
issue's 0.01, and how many chosen fits stopped at max_iter.
Usage: python scripts/bench_probe_solvers.py [--params params.yaml] [--cache results/seed-0/activations] [--stage 3]
       [--every 3] [--solvers lbfgs newton-cg newton-cholesky sag saga]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from bench_probes import TOLERANCE, cache_arguments, load_units
from figures import figure
from threadpoolctl import threadpool_limits

from cocoracle.probes import fit_probe, label_key, label_splits


def distinct_labels(data: dict) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The unit's (train, val, test) splits of each distinct label vector, as the probe step fits them."""
    seen, out = set(), []
    for key in data["train"][1]:
        labels = label_key(data, key)
        if labels not in seen:
            seen.add(labels)
            out.append(label_splits(data, key))
    return out


def main() -> None:
    parser = cache_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--every", type=int, default=3, help="fit every k-th unit (1: all)")
    parser.add_argument("--solvers", nargs="+", default=["lbfgs", "newton-cg", "newton-cholesky", "sag", "saga"],
                        help="the first is the one the others are compared with")
    args = parser.parse_args()
    probes, units = load_units(args)
    work = [splits for _, data in units[::args.every] for splits in distinct_labels(data)]
    seconds = dict.fromkeys(args.solvers, 0.0)
    fits: dict[str, list] = {solver: [] for solver in args.solvers}
    with threadpool_limits(limits=1):
        for splits in work:
            for solver in args.solvers:  # taking turns: a slower minute of the machine hits every solver alike
                start = time.perf_counter()
                fits[solver].append(fit_probe(*splits, probes["C_grid"], probes["max_iter"], solver=solver))
                seconds[solver] += time.perf_counter() - start
    reference = args.solvers[0]
    kept = [i for i, fitted in enumerate(fits[reference]) if fitted is not None]
    print(f"stage {args.stage}: every {args.every}. unit, {len(kept)} probes, C grid {probes['C_grid']}, "
          f"max_iter {probes['max_iter']}, one BLAS thread")
    print("| solver | seconds | speed-up over " + reference + " | largest difference (val / test) | "
          f"probes beyond {TOLERANCE} | chosen fits stopped at max_iter |")
    print("|---|---|---|---|---|---|")
    for solver in args.solvers:
        pairs = [(fits[solver][i], fits[reference][i]) for i in kept]
        val = max(abs(a["val_accuracy"] - b["val_accuracy"]) for a, b in pairs)
        test = max(abs(a["accuracy"] - b["accuracy"]) for a, b in pairs)
        beyond = sum(max(abs(a["val_accuracy"] - b["val_accuracy"]), abs(a["accuracy"] - b["accuracy"])) > TOLERANCE
                     for a, b in pairs)
        stopped = sum(not a["converged"] for a, _ in pairs)
        print(f"| {solver} | {seconds[solver]:.1f} | {seconds[reference] / seconds[solver]:.2f}x | "
              f"{val:.4f} / {test:.4f} | {beyond} | {stopped} |")
        if solver != reference:
            figure(f"probe solver {solver}: speed-up over {reference}", seconds[reference] / seconds[solver], "x")


if __name__ == "__main__":
    main()

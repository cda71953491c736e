"""Peak RSS of collecting and reading the activation cache for N and 10xN problems, and collection's resident
memory after each batch.

Each measurement runs in a fresh subprocess that reports its own peak RSS (getrusage). Prints rows, seconds, rows/s,
peak RSS for both sizes, and the RSS ratio (target <= 1.2).
Usage: python scripts/bench_activation_memory.py [--params params.yaml] [--problems 1000]
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from figures import figure


def collect(params_path: str, n: int, work: Path) -> None:
    """Generate n test problems, save an untrained checkpoint, collect its all-latent activations."""
    from cocoracle.activations import ShardWriter, collect_activations
    from cocoracle.config import load_params, run_seed
    from cocoracle.data import load_split, write_splits
    from cocoracle.model import initial_model, save_checkpoint

    params = copy.deepcopy(load_params(params_path))
    params["data"].update(n_train=200, n_val=10, n_test=n, n_ood=0)
    params["activations"]["max_problems"] = None
    write_splits(params["data"], work / "data")
    model, tokenizer = initial_model(params["model"], load_split(work / "data", "train"), run_seed(params))
    stage = params["coconut"]["num_stages"]
    save_checkpoint(model, tokenizer, work / "ckpt", {**params, "stage": stage})
    after_batches, add = [], ShardWriter.add

    def traced(writer: ShardWriter, tensors: dict) -> None:
        add(writer, tensors)
        after_batches.append(_current_mb())
    ShardWriter.add = traced
    start = time.perf_counter()
    collect_activations(params, stage, work / "ckpt", work / "data", "test", work / "cache", torch.device("cpu"))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_mb(),
                      "rss_after_batches_mb": after_batches}))


def read(work: Path) -> None:
    """Stream every tensor of the cache once (what probes do), verifying checksums on open."""
    from cocoracle.cache_reader import ActivationCache

    cache = ActivationCache(work / "cache")
    start, total = time.perf_counter(), 0.0
    for tensor in cache.tensors:
        for _, block in cache.iter_batches(tensor):
            total += float(block.sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rows": cache.manifest["rows"], "peak_rss_mb": _peak_mb()}))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    """This process's resident memory now (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def measure(mode: str, params: str, n: int, work: Path) -> dict:
    """Run one measurement in a fresh process; it reports its own time and peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--params", params, "--problems", str(n),
                          "--work", str(work)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--child", choices=["collect", "read"])
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child == "collect":
        return collect(args.params, args.problems, Path(args.work))
    if args.child == "read":
        return read(Path(args.work))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.problems, 10 * args.problems):
            work = Path(tmp) / str(n)
            work.mkdir()
            results[n] = {step: measure(step, args.params, n, work) for step in ("collect", "read")}
    small, large = results[args.problems], results[10 * args.problems]
    for n, r in results.items():
        rows = r["read"]["rows"]
        print(f"{n} problems, {rows} rows: collect {r['collect']['seconds']:.1f} s "
              f"({rows / r['collect']['seconds']:.0f} rows/s), "
              f"peak RSS {r['collect']['peak_rss_mb']:.0f} MB; read {r['read']['seconds']:.1f} s "
              f"({rows / r['read']['seconds']:.0f} rows/s), peak RSS {r['read']['peak_rss_mb']:.0f} MB")
    trace = large["collect"]["rss_after_batches_mb"]
    quarter = max(len(trace) // 4, 1)
    first, last = sum(trace[:quarter]) / quarter, sum(trace[-quarter:]) / quarter
    print(f"collect, {10 * args.problems} problems: resident memory after each of its {len(trace)} batches "
          f"{min(trace):.0f}-{max(trace):.0f} MB, mean of the first quarter {first:.0f} MB, of the last {last:.0f} MB")
    figure(f"activations collect: resident memory, last quarter of {len(trace)} batches / first", last / first, "x",
           at_most=1.2)
    for mode in ("collect", "read"):
        print(f"{mode} RSS ratio 10xN / N: {large[mode]['peak_rss_mb'] / small[mode]['peak_rss_mb']:.2f}")
        figure(f"activations {mode}: peak RSS at 10x the problems / at 1x",
               large[mode]["peak_rss_mb"] / small[mode]["peak_rss_mb"], "x", at_most=1.2)


if __name__ == "__main__":
    main()

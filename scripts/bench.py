"""Run the benchmarks of scripts/ that are cheap enough by default, one after another, each under a header, and end
with one table of every benchmark's headline figures beside issue 13's targets (scripts/figures.py).

bench_floor, bench_training, bench_step_profile, bench_oracle_step, bench_batching, bench_kv_cache,
bench_activation_memory (with a small --problems) and bench_rule_memory (two whole DAGs with capped training) always;
bench_noop, bench_probes, bench_probe_solvers and bench_oracle_eval only with --run, a finished run directory (a
checkout whose outputs are complete), which also gives bench_floor the run's measured wall times;
bench_gpu (params/gpt2-large.yaml's first stage, random weights) only where CUDA is available.
Usage: python scripts/bench.py [--params params.yaml] [--run DIR] [--quick]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from figures import MARK, gathered, table

from cocoracle.config import load_params

HERE = Path(__file__).resolve().parent


def commands(params: str, run: Path | None, quick: bool) -> list[list[str]]:
    """Each benchmark's argument list (script name first)."""
    out = [["bench_floor.py", "--params", params, "--samples", "1" if quick else "8",
            *(["--logs", str(run / "logs")] if run is not None else [])],
           ["bench_training.py", "--params", params, *(["--quick"] if quick else [])],
           ["bench_step_profile.py", "--params", params, "--repeats", "2" if quick else "8"],
           ["bench_oracle_step.py", "--params", params, "--repeats", "3" if quick else "20"],
           ["bench_batching.py", "--params", params, "--repeats", "3" if quick else "20"],
           ["bench_kv_cache.py", "--params", params, "--batches", "3" if quick else "20"],
           # N of several batches of activations.batch_size (256): with fewer, N's peak is of fewer batches
           ["bench_activation_memory.py", "--params", params, "--problems", "20" if quick else "1000"],
           ["bench_rule_memory.py", "--params", params, *(["--problems", "40", "--steps", "2"] if quick else [])]]
    if torch.cuda.is_available():
        out.append(["bench_gpu.py", "--params", "params/gpt2-large.yaml", "--random",
                    "--steps", "30" if quick else "300"])
    if run is not None:
        stage = str(load_params(params)["coconut"]["num_stages"])
        out += [["bench_noop.py", str(run), "--runs", "1" if quick else "5"],
                ["bench_probes.py", "--params", params, "--cache", str(run / "results/seed-0/activations"),
                 "--stage", stage],
                ["bench_probe_solvers.py", "--params", params, "--cache", str(run / "results/seed-0/activations"),
                 "--stage", stage, "--every", "27" if quick else "9"],
                ["bench_oracle_eval.py", str(run), "--stage", stage]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", type=Path, help="a finished run directory: also bench_noop and the probe benchmarks")
    parser.add_argument("--quick", action="store_true", help="each benchmark at its smallest useful size")
    args = parser.parse_args()
    start, failed, found = time.perf_counter(), [], []
    for script, *rest in commands(args.params, args.run, args.quick):
        print(f"\n=== {script} {' '.join(rest)}", flush=True)
        begin = time.perf_counter()
        rc, lines = run(script, rest)
        found += [(script.removesuffix(".py"), f) for f in gathered(lines)]
        print(f"--- {time.perf_counter() - begin:.1f} s" + (f", FAILED (exit {rc})" if rc else ""), flush=True)
        if rc:
            failed.append(script)
    print(f"\ntotal {time.perf_counter() - start:.1f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print("\n" + table(found))
    return 1 if failed else 0


def run(script: str, args: list[str]) -> tuple[int, list[str]]:
    """Run one benchmark, passing its output through but for its figure lines; its exit status and every line."""
    lines = []
    with subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith(MARK):
                print(line, end="", flush=True)
    return proc.returncode, lines


if __name__ == "__main__":
    sys.exit(main())

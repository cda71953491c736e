"""Does any rule's memory grow with the number of problems? Peak RSS of every job at N and SCALE x N problems.

Runs the whole DAG with Snakemake twice, each in a fresh clone of this checkout's HEAD (commit first), with the
same params except the number of problems: data.n_train = N (val, test and OOD N/4 each; every problem cached,
activations.max_problems null), then SCALE times as many. Training and oracle training stop after --steps
optimizer steps in both runs, and train.mix_prob is 0, so the two runs differ only in how many problems each job
reads, holds and scores: with mixing, which earlier-stage layouts a capped stage draws depends on the number of
problems (the batches are drawn from the same RNG first), and a stage-0 layout's longer sequences set a later
stage's peak in one run and not the other. Choose sizes whose splits fill every declared batch size so that no
batch grows with the problems either: --problems 1024 gives splits of 256 = evaluate.batch_size, --problems 2048
test splits of 512 = oracle.batch_size, with which the oracle evaluation measures answer accuracy on the test split.
Two figures per job: the peak RSS of its own process, exact (the last line of its log: `cocoracle` logs
getrusage's maximum), and Snakemake's `max_rss` (benchmark file: the whole process tree, e.g. the probe
step's worker processes, summed and sampled every 0.5 s for the first 15 s, then every 30 s). The table prints
both at both sizes, and the process's growth per 1000 train problems.
Usage: python scripts/bench_rule_memory.py [--params params.yaml] [--problems 200] [--scale 4] [--steps 20]
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from figures import figure

REPO = Path(__file__).resolve().parent.parent
PEAK = re.compile(r"done in ([\d.]+) s, peak RSS of this process (\d+) MB$")


def scaled_params(params: dict, problems: int, steps: int) -> dict:
    """params with `problems` train problems (a quarter as many in each other split), capped training, no mixing."""
    out = copy.deepcopy(params)
    quarter = max(problems // 4, 1)
    out["data"].update(n_train=problems, n_val=quarter, n_test=quarter, n_ood=quarter)
    out["activations"]["max_problems"] = None
    out["train"].update(max_steps=steps, mix_prob=0.0, val_examples=min(out["train"]["val_examples"], quarter),
                        warmup_steps=min(out["train"]["warmup_steps"], steps))  # a warmup within the capped steps
    for kind in ("separate", "self"):
        hp = out["oracle"][kind]["train"]
        hp.update(max_steps=steps, warmup_steps=min(hp["warmup_steps"], steps))
    out["resume"] = {"every_steps": None, "every_minutes": None}
    return out


def run_dag(params: dict, work: Path) -> float:
    """Clone HEAD into work, write params, run the whole DAG; its wall seconds."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(work)}
    start = time.perf_counter()
    proc = subprocess.run(["snakemake", "--cores", "all"], cwd=work, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"snakemake failed in {work}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def peaks(work: Path) -> dict[str, tuple[float, float]]:
    """Per job (its log's path under logs/, without .log): its process's peak RSS (log) and its process tree's
    (benchmark file's max_rss), in MB."""
    out = {}
    for log in sorted((work / "logs").rglob("*.log")):
        found = [m for line in log.read_text().splitlines() if (m := PEAK.search(line))]
        job = log.relative_to(work / "logs").with_suffix("")
        tsv = (work / "benchmarks" / job).with_suffix(".tsv")
        if found and tsv.exists():
            tree = float(tsv.read_text().splitlines()[1].split("\t")[2])
            out[str(job)] = (float(found[-1][2]), tree)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--problems", type=int, default=200, help="train problems of the smaller run")
    parser.add_argument("--scale", type=int, default=4, help="the larger run has this many times as many")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of every training job")
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    sizes = (args.problems, args.scale * args.problems)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for n in sizes:
            wall = run_dag(scaled_params(params, n, args.steps), Path(tmp) / str(n))
            runs[n] = peaks(Path(tmp) / str(n))
            print(f"{n} train problems: whole DAG {wall:.0f} s", flush=True)
    small, large = runs[sizes[0]], runs[sizes[1]]
    extra = (sizes[1] - sizes[0]) / 1000
    print(f"commit {commit}, {args.params}, threads {os.cpu_count()}, training jobs capped at {args.steps} steps")
    print(f"{'':<32}{'this process (exact)':>40}{'process tree (sampled)':>24}")
    print(f"{'job':<32}{'@' + str(sizes[0]):>9}{'@' + str(sizes[1]):>9}{'growth':>8}{'MB/1000':>8}{'ratio':>6}"
          f"{'@' + str(sizes[0]):>9}{'@' + str(sizes[1]):>9}{'ratio':>6}")
    for job in sorted(small.keys() & large.keys()):
        (a, ta), (b, tb) = small[job], large[job]
        print(f"{job:<32}{a:>7.0f}MB{b:>7.0f}MB{b - a:>6.0f}MB{(b - a) / extra:>8.1f}{b / a:>6.2f}"
              f"{ta:>7.0f}MB{tb:>7.0f}MB{tb / ta:>6.2f}")
    worst = max(small.keys() & large.keys(), key=lambda job: large[job][0] / small[job][0])
    figure(f"largest peak-RSS growth, {sizes[1]} / {sizes[0]} problems ({worst})", large[worst][0] / small[worst][0],
           "x")


if __name__ == "__main__":
    main()

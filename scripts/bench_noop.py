"""Time no-op and incremental planning on a finished run: `snakemake -n` and `dvc status`, median of a few runs.

    python scripts/bench_noop.py [REPO] [--runs 5] [--change probes.max_iter=301 --change train.lr=0.0011]

REPO (default: .) is a checkout whose outputs are complete; its own `cocoracle` package is put first on
PYTHONPATH, so the Snakefile plans with that checkout's code. Each command is also checked to be a
no-op: a figure for a command that finds work to do is reported as such, not as planning time. Then, for each
--change (a parameter set in REPO's params.yaml, put back afterwards), the same commands must find work: the
jobs Snakemake would rerun and the stages DVC reports changed, and how long planning them took.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from figures import figure

from cocoracle.atomic import write_text

COMMANDS = {
    "snakemake -n": (["snakemake", "-n", "--cores", "1"], lambda out: "Nothing to be done" in out),
    "dvc status": (["dvc", "status", "--json"], lambda out: json.loads(out or "{}") == {}),
}
CHANGES = ["probes.max_iter=301", "train.lr=0.0011"]  # a leaf step's parameter and the first training stage's


def planned(name: str, out: str) -> list[str]:
    """What a planning command's output would rerun: Snakemake's jobs (rule x count), DVC's changed stages."""
    if name == "dvc status":
        return sorted(json.loads(out or "{}"))
    jobs = []
    for line in out.split("Job stats:", 1)[-1].splitlines()[3:] if "Job stats:" in out else []:
        rule, count = line.split()
        if rule == "total":
            break
        jobs.append(rule if count == "1" else f"{rule} x{count}")
    return jobs


@contextmanager
def changed_params(repo: Path, change: str) -> Iterator[None]:
    """REPO's params.yaml with one dotted key set to a YAML value; the file's own text put back afterwards, also
    when a planning command fails or the script is stopped by SIGINT or SIGTERM (each write is atomic)."""
    key, equals, value = change.partition("=")
    if not equals:
        sys.exit(f"--change {change}: expected KEY=VALUE, e.g. probes.max_iter=301")
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    section = params
    *parents, leaf = key.split(".")
    for part in parents:
        section = section.get(part) if isinstance(section, dict) else None
    if not isinstance(section, dict) or leaf not in section:
        sys.exit(f"--change {change}: {key} is not a parameter in {path}")
    section[leaf] = yaml.safe_load(value)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}; {path} put back")
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        write_text(path, yaml.safe_dump(params, sort_keys=False))
        yield
    finally:
        write_text(path, original)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def time_runs(cmd: list[str], repo: Path, env: dict[str, str], runs: int) -> tuple[list[float], list[str]]:
    """Wall seconds and stdout of each of `runs` runs of one command."""
    times, outs = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"`{' '.join(cmd)}` failed in {repo} ({proc.returncode}): {last}")
        outs.append(proc.stdout)
    return times, outs


def spread(times: list[float]) -> str:
    """Median (min-max) seconds."""
    return f"{statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=".", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--change", action="append", help=f"KEY=VALUE to plan after (default: {' and '.join(CHANGES)})")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(repo), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    print(f"{repo}: median of {args.runs} runs (min-max)")
    for name, (cmd, is_noop) in COMMANDS.items():
        times, outs = time_runs(cmd, repo, env, args.runs)
        noop = all(is_noop(out) for out in outs)
        print(f"{name:14s} {spread(times)}  {'no-op' if noop else 'NOT a no-op: it plans work'}")
        figure(f"no-op `{name}`, median" + ("" if noop else " (NOT a no-op)"), statistics.median(times), "s",
               at_most=5)
    for change in args.change or CHANGES:
        with changed_params(repo, change):
            for name, (cmd, is_noop) in COMMANDS.items():
                times, outs = time_runs(cmd, repo, env, args.runs)
                work = planned(name, outs[0])
                found = bool(work) and not any(is_noop(out) for out in outs)
                print(f"{name:14s} {spread(times)}  after {change}: "
                      + (", ".join(work) if found else "NOTHING planned: the change was not seen"))
                figure(f"incremental `{name}` after {change}, median" + ("" if found else " (planned NOTHING)"),
                       statistics.median(times), "s", at_most=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

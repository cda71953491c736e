"""Time no-op planning on a finished run: `snakemake -n` and `dvc status`, median of a few runs each.

    python scripts/bench_noop.py [REPO] [--runs 5]

REPO (default: .) is a checkout whose outputs are complete; its own `cocoracle` package is put first on
PYTHONPATH, so the Snakefile plans with that checkout's code. Each command is also checked to be a
no-op: a figure for a command that finds work to do is reported as such, not as planning time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from figures import figure

COMMANDS = {
    "snakemake -n": (["snakemake", "-n", "--cores", "1"], lambda out: "Nothing to be done" in out),
    "dvc status": (["dvc", "status", "--json"], lambda out: json.loads(out or "{}") == {}),
}


def time_command(cmd: list[str], repo: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one run, and its stdout."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=".", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PYTHONPATH=str(repo), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    print(f"{repo}: median of {args.runs} runs (min-max)")
    for name, (cmd, is_noop) in COMMANDS.items():
        times, outs = zip(*(time_command(cmd, repo, env) for _ in range(args.runs)), strict=True)
        noop = all(is_noop(out) for out in outs)
        print(f"{name:14s} {statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})"
              f"  {'no-op' if noop else 'NOT a no-op: it plans work'}")
        figure(f"no-op `{name}`, median" + ("" if noop else " (NOT a no-op)"), statistics.median(times), "s",
               at_most=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())

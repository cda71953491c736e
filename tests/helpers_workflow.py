"""Temporary copies of the repository for running the real engines on the smoke parameters."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
SMOKE_PARAMS = REPO / "tests" / "smoke-params.yaml"
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with the project's environment on PATH; on failure show its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=engine_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def repo_copy(dest: Path, params: Path | None = SMOKE_PARAMS) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into dest, as a fresh git repo with one commit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if params is not None:
        shutil.copy(params, dest / "params.yaml")
        run(["cocoracle", "dvc-yaml"], cwd=dest)
    # fixed dates: copies of the same files are the same commit, so their outputs' provenance is the same bytes
    dates = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["env", *(f"{k}={v}" for k, v in dates.items()), "git", "-c", "user.name=t", "-c", "user.email=t@t",
                 "commit", "-qm", "copy"]):
        run(cmd, cwd=dest)
    return dest


def copy_run(src: Path, dest: Path) -> Path:
    """A copy of a finished run (dest must not exist) that both engines see as finished: every file keeps its bytes
    and mtime (Snakemake compares outputs' mtimes with their inputs'), with .snakemake/ (Snakemake's record of each
    output's params, code and inputs), dvc.lock, .dvc/ (DVC's cache) and .git/. Neither engine records absolute
    paths there, so `snakemake -n` and `dvc status` have nothing to do in the copy (test_workflow checks both)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def flat_keys(value, prefix: str = "") -> dict[str, object]:
    """{'a.b.c': leaf} for a nested dict, as DVC names a metrics file's keys."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, object] = {}
    for key, sub in value.items():
        out.update(flat_keys(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


def set_param(repo: Path, section: str, key: str, value) -> None:
    """Change one parameter in the copy's params.yaml."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def differing_outputs(repo: Path, other: Path) -> tuple[list[str], list[str]]:
    """Two runs' outputs: (files in only one of them, files that differ, each with where it first differs).

    Every file under data/, models/ and results/ is compared byte for byte. A file whose bytes differ only by
    run-to-run noise (`within_noise`) passes with a warning naming it, so that CI's log shows every occurrence.
    """
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for d in ("data", "models", "results") for p in (root / d).rglob("*")
                if p.is_file() and p.name not in (".gitignore", ".snakemake_timestamp")}

    ours, theirs = files(repo), files(other)
    found = ((rel, output_difference(repo / rel, other / rel)) for rel in sorted(ours & theirs))
    return sorted(ours ^ theirs), [f"{rel}: {difference}" for rel, difference in found if difference]


def output_difference(a: Path, b: Path) -> str | None:
    """None when two versions of an output have the same bytes or differ within run-to-run noise (then with a
    warning naming it, so that CI's log shows every occurrence); else where they first differ."""
    if a.read_bytes() == b.read_bytes():
        return None
    if within_noise(a, b):
        warnings.warn(f"{a}: not the same bytes as {b}, within run-to-run noise: {describe_difference(a, b)}",
                      stacklevel=2)
        return None
    return describe_difference(a, b)


# The one known source of run-to-run noise (docs/reliability.md): rarely, a float differs in its last bit between
# two runs of the same step, params and threads (seen in activation caches and stage-2 training, cause not found),
# and what is computed from it differs by as little. Real nondeterminism (another seed, data order or thread
# count) moves weights and metrics by orders of magnitude more.
FLOAT_RTOL, FLOAT_ATOL = 1e-4, 1e-6
CACHE_RTOL, CACHE_ATOL = 2 ** -10, 2 ** -14  # one float16 step
NUMBER = re.compile(r"-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+|-?\d+")
DIGEST = re.compile(r"\b[0-9a-f]{64}\b")  # sha256 of files, which differ when the file does (not git revisions)


def within_noise(a: Path, b: Path) -> bool:
    """Whether two versions of an output differ by no more than FLOAT_RTOL/ATOL: the same tensors, text, records and
    integers, floats within tolerance (cache tensors within one float16 step), hashes ignored, plots drawn alike."""
    if a.suffix == ".safetensors":
        x, y = load_file(a), load_file(b)
        cache = "results/seed-0/activations/" in str(a)
        tol = {"rtol": CACHE_RTOL, "atol": CACHE_ATOL} if cache else {"rtol": FLOAT_RTOL, "atol": FLOAT_ATOL}
        return x.keys() == y.keys() and all(
            x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
            and (torch.allclose(x[k].double(), y[k].double(), **tol) if x[k].is_floating_point()
                 else torch.equal(x[k], y[k])) for k in x)
    if a.suffix == ".png":
        from matplotlib.image import imread

        x, y = imread(a), imread(b)
        return x.shape == y.shape and float((abs(x - y) > 0.02).any(-1).mean()) < 0.005
    if a.suffix == ".parquet":
        import pandas as pd

        x, y = pd.read_parquet(a), pd.read_parquet(b)
        return list(x.columns) == list(y.columns) and len(x) == len(y) and _same_text(x.to_csv(), y.to_csv())
    try:
        return _same_text(a.read_text(), b.read_text())
    except UnicodeDecodeError:
        return False


def _same_text(x: str, y: str) -> bool:
    """The same text outside numbers and hashes; the same integers; floats within FLOAT_RTOL/ATOL."""
    x, y = DIGEST.sub("<hash>", x), DIGEST.sub("<hash>", y)
    if NUMBER.split(x) != NUMBER.split(y):
        return False
    pairs = zip(NUMBER.findall(x), NUMBER.findall(y), strict=True)
    return all(p == q if p.lstrip("-").isdigit() and q.lstrip("-").isdigit()
               else math.isclose(float(p), float(q), rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL) for p, q in pairs)


def describe_difference(a: Path, b: Path) -> str:
    """Where two versions of a file first differ, in one line (for a failing run comparison's message)."""
    if a.suffix == ".safetensors":
        x, y = load_file(a), load_file(b)
        if x.keys() != y.keys():
            return f"{a.name}: {len(x.keys() ^ y.keys())} tensors in one only, e.g. {sorted(x.keys() ^ y.keys())[:3]}"
        for key in sorted(x):
            if x[key].shape != y[key].shape:
                return f"{a.name}[{key}]: shapes {tuple(x[key].shape)} vs {tuple(y[key].shape)}"
            unequal = (x[key] != y[key]).nonzero()
            if len(unequal):
                gap = (x[key].double() - y[key].double()).abs().max().item()
                return (f"{a.name}[{key}]: {len(unequal)} of {x[key].numel()} values differ, first at "
                        f"{unequal[0].tolist()}, largest gap {gap:.3g}")
        return f"{a.name}: same tensors, different header"
    try:
        ours, theirs = a.read_text().splitlines(), b.read_text().splitlines()
    except UnicodeDecodeError:
        return f"{a.name}: binary, {a.stat().st_size} vs {b.stat().st_size} bytes"
    for line, (x, y) in enumerate(zip(ours, theirs, strict=False), 1):
        if x != y:
            return f"{a.name} line {line}: {x[:120]!r} vs {y[:120]!r}"
    return f"{a.name}: {len(ours)} vs {len(theirs)} lines"


def engine_env() -> dict[str, str]:
    """The environment `run` gives its commands, for those started otherwise (e.g. with output to a file:
    `dvc queue start` spawns workers that inherit its stdout, so `run`'s pipes would stay open until they exit).
    No OMP_NUM_THREADS: snakemake sets it to a job's threads, and float results depend on it, so both engines
    must see the machine's default for their results to match bit for bit."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    return env

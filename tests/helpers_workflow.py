"""Temporary copies of the repository for running the real engines on the smoke parameters."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE_PARAMS = REPO / "tests" / "smoke-params.yaml"
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with the project's environment on PATH; on failure show its output."""
    # no OMP_NUM_THREADS here: snakemake sets it to a job's threads, and float results depend on it,
    # so both engines must see the machine's default for their results to match bit for bit
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
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


def set_param(repo: Path, section: str, key: str, value) -> None:
    """Change one parameter in the copy's params.yaml."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def differing_outputs(repo: Path, other: Path) -> tuple[list[str], list[str]]:
    """Two runs' outputs: (files in only one of them, files that differ, each with where it first differs, and
    when any does, the cache shards that differ within the tolerance below, which may explain them).

    Every file under data/, models/ and results/ is compared byte for byte, except where the one known source
    of run-to-run noise reaches: activation cache shards may differ in the last float16 bit (rarely; see
    docs/reliability.md), so their tensors are compared to within one float16 step, and the records that hash
    a cache (manifests, provenance, checksums of oracle directories, the `provenance` key of metrics files)
    are compared without those hashes.
    """
    import json

    import torch
    from safetensors.torch import load_file

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for d in ("data", "models", "results") for p in (root / d).rglob("*")
                if p.is_file() and p.name not in (".gitignore", ".snakemake_timestamp")}

    def same(rel: str) -> bool:
        a, b = repo / rel, other / rel
        if a.read_bytes() == b.read_bytes():
            return True
        if rel.startswith("results/activations/") and a.suffix == ".safetensors":
            x, y = load_file(a), load_file(b)
            close = x.keys() == y.keys() and all(
                torch.allclose(x[k].float(), y[k].float(), rtol=2 ** -10, atol=2 ** -14) for k in x)
            if close and any(not torch.equal(x[k], y[k]) for k in x):
                tolerated.append(f"{rel} (within one float16 step, tolerated): {describe_difference(a, b)}")
            return close
        if a.name in ("provenance.json", "checksums.json") and rel.startswith("models/oracle/"):
            return True  # they hash the caches the oracle was trained on; its weights are compared byte for byte
        if a.suffix == ".json":
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            for record in (x, y):
                record.pop("provenance", None)
                for key in ("shards", "index_sha256"):
                    record.pop(key, None) if rel.startswith("results/activations/") else None
            return x == y
        return False

    tolerated: list[str] = []
    ours, theirs = files(repo), files(other)
    differ = [f"{rel}: {describe_difference(repo / rel, other / rel)}"
              for rel in sorted(ours & theirs) if not same(rel)]
    return sorted(ours ^ theirs), (differ + tolerated if differ else [])  # the tolerated ones as context


def describe_difference(a: Path, b: Path) -> str:
    """Where two versions of a file first differ, in one line (for a failing run comparison's message)."""
    if a.suffix == ".safetensors":
        from safetensors.torch import load_file

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
    `dvc queue start` spawns workers that inherit its stdout, so `run`'s pipes would stay open until they exit)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    return env

"""Moving between engines at no cost: `cocoracle pull` after DVC, `cocoracle commit` after Snakemake.

`cocoracle pull`: fetch a run's outputs with DVC, then let Snakemake adopt them as up to date.

A checkout gives files fresh, arbitrarily ordered mtimes and a clone has no `.snakemake/` metadata, so
Snakemake would rerun steps whose results are already there, or, lacking metadata, miss later param
changes. DVC knows from content hashes whether each output matches the current params, code and
inputs; once `dvc status` says so, `snakemake --touch --forceall` stamps every output in DAG order
and records its params, code and inputs, so later changes rerun exactly the steps they affect.
After `dvc repro` in the workspace, `cocoracle pull --no-fetch` does the same without fetching.

`cocoracle commit`: the reverse, after a Snakemake run. Snakemake writes no dvc.lock, so `dvc status` calls every
stage changed and `dvc repro` would recompute them. Once `snakemake -n` plans nothing (the outputs are current for
the params, code and inputs), `dvc commit --force` records their hashes in dvc.lock and the DVC cache, computing
nothing; `dvc status` is then clean.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(cmd: list[str], cwd: Path, capture: bool = False) -> str:
    """Run a command; raise SystemExit with its name if it fails."""
    proc = subprocess.run(cmd, check=False, cwd=cwd, text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        raise SystemExit(f"cocoracle pull: `{' '.join(cmd)}` failed ({proc.returncode})")
    return proc.stdout or ""


def stale_stages(cwd: Path) -> list[str]:
    """The DVC stages whose outputs do not match the current params, code and inputs."""
    return sorted(json.loads(_run(["dvc", "status", "--json"], cwd, capture=True) or "{}"))


def pull(cwd: str | Path = ".", remote: str | None = None, fetch: bool = True) -> None:
    """`dvc pull` (or `dvc checkout` without fetch), check it is current, then `snakemake --touch --forceall`."""
    cwd = Path(cwd)
    if fetch:
        _run(["dvc", "pull", *(["--remote", remote] if remote else [])], cwd)
    else:
        _run(["dvc", "checkout"], cwd)
    stale = stale_stages(cwd)
    if stale:
        raise SystemExit("cocoracle pull: outputs do not match the current params/code for "
                         f"{', '.join(stale)}; Snakemake left as is (run `snakemake` or `dvc repro`)")
    _run(["snakemake", "--touch", "--forceall", "--cores", "1", "--quiet"], cwd)
    print("cocoracle pull: DVC outputs are current; Snakemake metadata and mtimes recorded", file=sys.stderr)


def commit(cwd: str | Path = ".") -> None:
    """After a Snakemake run: check `snakemake -n` plans nothing, then `dvc commit --force`, then `dvc status`."""
    cwd = Path(cwd)
    planned = _run(["snakemake", "--dry-run", "--cores", "1"], cwd, capture=True)
    if "Nothing to be done" not in planned:
        raise SystemExit("cocoracle commit: `snakemake -n` plans jobs: the outputs are not current; DVC left as is "
                         "(run `snakemake` first)")
    _run(["dvc", "commit", "--force", "--quiet"], cwd)
    stale = stale_stages(cwd)
    if stale:
        raise SystemExit(f"cocoracle commit: `dvc status` still lists {', '.join(stale)} after `dvc commit`")
    print("cocoracle commit: Snakemake outputs are current; recorded in dvc.lock and the DVC cache", file=sys.stderr)

"""One engine at a time: a `dvc repro` started during a `snakemake` run (and the reverse) refuses in one line naming
the run in progress, and the first run finishes unharmed; two runs of one engine meet that engine's own lock."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cocoracle.engine_lock import LOCK_FILE, _dvc_run, _is_locked
from helpers_workflow import BIN, run

pytestmark = pytest.mark.e2e
SNAKEMAKE = ["snakemake", "--cores", "2", "models/seed-0/stage-0"]
DVC = ["dvc", "repro", "train_stage_0_seed_0"]


def _long_stage_0(repo: Path) -> Path:
    """A copy of a finished smoke run whose stage 0 is to run again, long enough to be running while a second engine
    starts (its old log removed: the new one shows that training has started)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["max_steps"] = 300
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "logs/seed-0/train/stage-0.log").unlink()
    return repo


@pytest.fixture()
def snakemake_workspace(snakemake_copy) -> Path:
    """The session's Snakemake run (a copy), where only stage 0 is to rerun."""
    return _long_stage_0(snakemake_copy)


@pytest.fixture()
def dvc_workspace(dvc_copy) -> Path:
    """The session's DVC run (a copy), where only stage 0 is to rerun: without its checkpoint, since Snakemake keeps
    no record of a DVC run's params and would find the finished stage 0 up to date."""
    shutil.rmtree(dvc_copy / "models/seed-0/stage-0")
    return _long_stage_0(dvc_copy)


def _start(cmd: list[str], repo: Path) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, first: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert first.poll() is None, f"the first run ended before {what}: {first.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _training(repo: Path) -> bool:
    return (repo / "logs/seed-0/train/stage-0.log").is_file()


def _finish(first: subprocess.Popen) -> str:
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    return out


def test_dvc_refuses_while_snakemake_runs(snakemake_workspace):
    repo = snakemake_workspace
    first = _start(SNAKEMAKE, repo)
    _wait_for(lambda: _is_locked(repo / LOCK_FILE) and _training(repo), first, "snakemake held the workspace")
    data = {p.name: p.read_bytes() for p in (repo / "data").glob("*.parquet")}
    second = run(DVC, cwd=repo, check=False)
    assert second.returncode != 0
    refusals = [line for line in (second.stdout + second.stderr).splitlines() if "is running in this workspace" in line]
    assert len(refusals) == 1 and "snakemake (pid " in refusals[0], second.stdout + second.stderr
    assert {p.name: p.read_bytes() for p in (repo / "data").glob("*.parquet")} == data  # persist: nothing deleted
    _finish(first)
    assert (repo / "models/seed-0/stage-0/model.safetensors").is_file()
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", "models/seed-0/stage-0"], cwd=repo).stdout


def test_snakemake_refuses_while_dvc_runs(dvc_workspace):
    repo = dvc_workspace
    first = _start(DVC, repo)
    _wait_for(lambda: _training(repo) and _dvc_run(repo) is not None, first, "dvc ran the training stage")
    second = run(SNAKEMAKE, cwd=repo, check=False)
    assert second.returncode != 0
    out = second.stdout + second.stderr
    refusals = [line for line in out.splitlines() if "is running in this workspace" in line]
    assert len(refusals) == 1 and "dvc repro train_stage_0_seed_0` (pid " in refusals[0], out
    _finish(first)
    assert run(["dvc", "status", "train_stage_0_seed_0"], cwd=repo).stdout.strip().endswith("up to date.")


@pytest.mark.parametrize("cmd, workspace", [(SNAKEMAKE, "snakemake_workspace"), (DVC, "dvc_workspace")],
                         ids=["snakemake", "dvc"])
def test_a_second_run_of_one_engine_meets_its_lock(request, cmd, workspace):
    repo = request.getfixturevalue(workspace)
    first = _start(cmd, repo)
    _wait_for(lambda: _training(repo), first, "training started")
    second = run(cmd, cwd=repo, check=False)
    assert second.returncode != 0
    out = (second.stdout + second.stderr).lower()
    assert "lock" in out or "is running in this workspace" in out, out
    _finish(first)
    assert (repo / "models/seed-0/stage-0/model.safetensors").is_file()

"""kill -9 of a training job mid-stage, then the same engine command: it resumes from the last resume state and
ends with the bytes of an uninterrupted run (Snakemake and DVC, smoke parameters with a longer stage 1)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers_workflow import BIN, copy_run, output_difference, repo_copy, run

pytestmark = pytest.mark.e2e
STEPS = 400  # optimizer steps of every stage: stage 1 runs long enough to be killed mid-way
ENGINES = {"snakemake": ["snakemake", "--cores", "2", "models/seed-0/stage-1"],
           "dvc": ["dvc", "repro", "train_stage_1_seed_0"]}
STAGE_0 = {"snakemake": ["snakemake", "--cores", "2", "models/seed-0/stage-0"],
           "dvc": ["dvc", "repro", "train_stage_0_seed_0"]}
STATE = "models/seed-0/stage-1.resume/state.json"


def _copy(dest: Path) -> Path:
    repo = repo_copy(dest)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["max_steps"] = STEPS
    params["resume"] = {"every_steps": 25, "every_minutes": None}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def _training_pid(repo: Path) -> int | None:
    """The stage-1 `cocoracle train` process running in repo, if any."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"--out" in cmdline and b"models/seed-0/stage-1" in cmdline and (proc / "cwd").resolve() == repo:
                return int(proc.name)
        except OSError:
            continue
    return None


def _kill_training_mid_stage(repo: Path, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run cmd; once stage 1 has saved a resume state, kill -9 its training process; return the engine's result."""
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    engine = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (repo / STATE).is_file():
        assert engine.poll() is None and time.monotonic() < deadline, "stage 1 ended before a resume state"
        time.sleep(0.05)
    pid = _training_pid(repo)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    out, _ = engine.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, engine.returncode, out, "")


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per engine: an uninterrupted run, and a copy of it made when its stage 0 was done (where the killed run
    starts, so that stage 0 is trained once)."""
    repos = {}
    for name, cmd in ENGINES.items():
        root = tmp_path_factory.mktemp(f"whole-{name}")
        repo = _copy(root / "whole")
        run(STAGE_0[name], cwd=repo)
        stage_0 = copy_run(repo, root / "stage-0")
        run(cmd, cwd=repo)
        repos[name] = repo, stage_0
    return repos


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_killed_training_resumes_to_the_same_bytes(engine, whole, tmp_path):
    uninterrupted, stage_0 = whole[engine]
    repo = copy_run(stage_0, tmp_path / "repo")
    killed = _kill_training_mid_stage(repo, ENGINES[engine])
    assert killed.returncode != 0
    saved = yaml.safe_load((repo / STATE).read_text())["step"]
    assert 0 < saved < STEPS
    assert not (repo / "models/seed-0/stage-1/model.safetensors").exists()  # no output that looks complete
    rerun = run(ENGINES[engine], cwd=repo)
    log = (repo / "logs/seed-0/train/stage-1.log").read_text()
    resumed = int(re.search(r"resuming from \S+ after step (\d+)", log).group(1))
    assert resumed >= saved  # it did not start over
    # stage 0 first: a difference there is not resume's (the killed run's stage 0 ran whole)
    for rel in ("models/seed-0/stage-0/model.safetensors", "models/seed-0/stage-1/model.safetensors",
                "models/seed-0/stage-1/params.json"):
        difference = output_difference(repo / rel, uninterrupted / rel)  # the same bytes, or run-to-run noise
        assert not difference, f"{rel}: {difference}"
    steps = pd.read_csv(repo / "results/seed-0/train/stage-1/plots/metrics/train/loss.tsv", sep="\t")["step"].tolist()
    assert steps == list(range(STEPS))  # no gap, no duplicate
    assert not (repo / "models/seed-0/stage-1.resume").exists()
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", "models/seed-0/stage-1"], cwd=repo).stdout \
        if engine == "snakemake" else '"train_stage_1_seed_0"' not in run(["dvc", "status", "--json"], cwd=repo).stdout
    assert rerun.returncode == 0

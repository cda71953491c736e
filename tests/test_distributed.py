"""Data-parallel training: two torchrun processes (gloo on CPU) follow one process's trajectory; stopped by a
signal, they resume to the bytes of an uninterrupted two-process run."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cocoracle.resume import resume_dir
from conftest import tiny_params_dict

# torchrun starts three processes for each of its five runs, and each of those imports torch: about a minute in all
# on two cores, so the fast loop leaves this module out (CI runs it: --full)
pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
STEPS = 6


def _params(tmp_path: Path, dropout: float = 0.0, resume: dict | None = None, **train) -> Path:
    params = tiny_params_dict()
    params["model"]["tiny"]["dropout"] = dropout  # dropout masks differ per process by design
    params["train"].update({"batch_size": 8, "max_steps": STEPS, "val_examples": 2, **train})
    params["resume"] = resume or params["resume"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train(params: Path, stage: int, data_dir: Path, out: Path, processes: int, init: Path | None = None,
           check: bool = True, program: list[str] | None = None) -> subprocess.CompletedProcess:
    """`cocoracle train` (or `program`) alone, or under `torchrun --nproc-per-node processes`."""
    launch = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}", "--no-python", "--"] \
        if processes > 1 else []
    cmd = [*launch, *(program or [str(BIN / "cocoracle")]), "train", "--params", str(params), "--stage", str(stage),
           "--data", str(data_dir), "--out", str(out / f"stage-{stage}"), "--live", str(out / f"live-{stage}"),
           "--log", str(out / f"stage-{stage}.log"), "--device", "cpu"]
    if init is not None:
        cmd += ["--init", str(init)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(live: Path) -> np.ndarray:
    lines = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return np.array([float(line.split("\t")[-1]) for line in lines])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Stages 0 and 1 trained by one process and by two, from the same params (global batch 8)."""
    root = tmp_path_factory.mktemp("ddp")
    params = _params(root)
    out = {}
    for processes in (1, 2):
        out[processes] = root / f"procs-{processes}"
        _train(params, 0, data_dir, out[processes], processes)
        _train(params, 1, data_dir, out[processes], processes, init=out[processes] / "stage-0")
    return out


@pytest.mark.parametrize("stage", [0, 1])
def test_two_processes_follow_the_single_process_loss_trajectory(runs, stage):
    single, double = _losses(runs[1] / f"live-{stage}"), _losses(runs[2] / f"live-{stage}")
    assert len(single) == len(double) == STEPS
    assert not np.allclose(single, single[0])  # the loss moves, so agreement is not trivial
    np.testing.assert_allclose(double, single, rtol=1e-5)


def test_two_processes_end_at_the_same_weights(runs):
    single = load_file(runs[1] / "stage-1" / "model.safetensors")
    double = load_file(runs[2] / "stage-1" / "model.safetensors")
    assert single.keys() == double.keys()
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-3, atol=1e-4)


def test_only_the_first_process_writes_the_log_and_the_checkpoint(runs):
    root = runs[2]
    assert "val accuracy" in (root / "stage-1.log").read_text()
    assert sorted(p.name for p in root.iterdir()) == ["live-0", "live-1", "stage-0", "stage-0.log", "stage-1",
                                                      "stage-1.log"]


def test_a_batch_that_does_not_split_over_the_processes_is_a_one_line_error(tmp_path, data_dir):
    proc = _train(_params(tmp_path, batch_size=7), 0, data_dir, tmp_path / "out", 2, check=False)
    assert proc.returncode != 0
    assert "cocoracle train: error: train.batch_size: 7 is not divisible by the 2 training processes" in proc.stderr
    assert not (tmp_path / "out" / "stage-0").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


STOP_AT = 3
# `cocoracle` whose second process, after step STOP_AT, does what `kill <torchrun pid>` (or SLURM) does: torchrun
# gets SIGTERM and passes it on to every process, each at its own moment; it waits until its own has come.
SIGNALLING_CLI = f"""
import os, signal, sys, time
import cocoracle.resume as resume
from cocoracle.cli import main

due = resume.Saver.due

def signal_torchrun(self, step):
    if step == {STOP_AT} and os.environ["RANK"] == "1":
        os.kill(os.getppid(), signal.SIGTERM)
        while self.stop_signal is None:
            time.sleep(0.01)
    return due(self, step)

resume.Saver.due = signal_torchrun
sys.exit(main())
"""


def _steps(live: Path) -> list[int]:
    header, *lines = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    column = header.split("\t").index("step")
    return [int(line.split("\t")[column]) for line in lines]


@pytest.fixture(scope="module")
def preempted(tmp_path_factory, data_dir):
    """Stage 0 by two processes with dropout: uninterrupted, and stopped by SIGTERM after step STOP_AT (a copy
    of its resume state is kept aside)."""
    root = tmp_path_factory.mktemp("ddp-resume")
    params = _params(root, dropout=0.1, resume={"every_steps": 2, "every_minutes": None})
    _train(params, 0, data_dir, root / "whole", 2)
    script = root / "signalling_cli.py"
    script.write_text(SIGNALLING_CLI)
    stopped = _train(params, 0, data_dir, root / "resumed", 2, check=False, program=[sys.executable, str(script)])
    state = resume_dir(root / "resumed" / "stage-0")
    if state.is_dir():
        shutil.copytree(state, root / "state-copy")
    return root, params, stopped


def test_a_signalled_two_process_stage_saves_one_state_and_stops_after_the_same_step(preempted):
    root, _, stopped = preempted
    assert stopped.returncode != 0
    assert f"SIGTERM: stopped after step {STOP_AT}; the resume state is in" in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.stderr.count("SIGTERM: stopped after step") == 1  # the first process's line only
    state = root / "state-copy"
    assert sorted(p.name for p in state.iterdir()) == ["extra.safetensors", "live", "model.safetensors",
                                                       "optimizer.safetensors", "rng-rank0.safetensors",
                                                       "rng-rank1.safetensors", "state.json"]
    saved = json.loads((state / "state.json").read_text())
    assert (saved["step"], saved["processes"]) == (STOP_AT, 2)
    ranks = [load_file(state / f"rng-rank{r}.safetensors")["cpu"] for r in (0, 1)]
    assert not torch.equal(*ranks)  # each process's own dropout stream
    assert not (root / "resumed" / "stage-0").exists()
    assert _steps(root / "resumed" / "live-0") == list(range(STOP_AT))


def test_the_rerun_finishes_with_the_bytes_of_an_uninterrupted_two_process_run(preempted, data_dir):
    root, params, _ = preempted
    _train(params, 0, data_dir, root / "resumed", 2)
    assert re.search(rf"resuming from \S+stage-0\.resume after step {STOP_AT}\n",
                     (root / "resumed" / "stage-0.log").read_text())
    for name in ("model.safetensors", "params.json"):
        whole, resumed = (root / run / "stage-0" / name for run in ("whole", "resumed"))
        assert whole.read_bytes() == resumed.read_bytes(), name
    assert _steps(root / "resumed" / "live-0") == _steps(root / "whole" / "live-0") == list(range(STEPS))
    np.testing.assert_array_equal(_losses(root / "resumed" / "live-0"), _losses(root / "whole" / "live-0"))
    assert not resume_dir(root / "resumed" / "stage-0").exists()


def test_a_two_process_state_is_refused_by_one_process(preempted, data_dir):
    root, params, _ = preempted
    out = root / "one-process"
    shutil.copytree(root / "state-copy", resume_dir(out / "stage-0"))
    proc = _train(params, 0, data_dir, out, 1)
    warning = "made by 2 training processes, this run has 1; ignored, training starts over"
    assert proc.stderr.count(warning) == 1, proc.stderr[-3000:]
    assert "resuming from" not in proc.stderr
    assert _steps(out / "live-0") == list(range(STEPS))
    assert not resume_dir(out / "stage-0").exists()

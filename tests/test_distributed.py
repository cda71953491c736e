"""Data-parallel training: two torchrun processes (gloo on CPU) follow one process's trajectory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_params_dict

BIN = Path(sys.executable).parent
STEPS = 6


def _params(tmp_path: Path, **train) -> Path:
    params = tiny_params_dict()
    params["model"]["tiny"]["dropout"] = 0.0  # dropout masks differ per process by design
    params["train"].update({"batch_size": 8, "max_steps": STEPS, "val_examples": 2, **train})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _train(params: Path, stage: int, data_dir: Path, out: Path, processes: int, init: Path | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """`cocoracle train` alone, or under `torchrun --nproc-per-node processes`."""
    launch = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}", "--no-python", "--"] \
        if processes > 1 else []
    cmd = [*launch, str(BIN / "cocoracle"), "train", "--params", str(params), "--stage", str(stage),
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

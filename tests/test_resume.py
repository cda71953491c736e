"""A training stage killed after a resume save continues from it: same checkpoint bytes, curves without gaps or
duplicates; a state from other params is ignored; the state is gone once the checkpoint is written."""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

import cocoracle.resume as resume_module
from cocoracle.resume import resume_dir
from cocoracle.train import train_stage

CPU = torch.device("cpu")


class Killed(Exception):
    """Stands for kill -9 right after a resume save."""


def _params(tiny_params: dict) -> dict:
    tiny_params["train"].update({"max_steps": 6, "val_examples": 2, "batch_size": 4})
    tiny_params["model"]["tiny"]["dropout"] = 0.1  # the RNG state matters
    tiny_params["resume"] = {"every_steps": 2, "every_minutes": None}
    return tiny_params


def _train(params: dict, data_dir: Path, out: Path) -> None:
    train_stage(params, 0, data_dir, None, out / "model", out / "live", CPU)


def _steps(out: Path) -> list[int]:
    return pd.read_csv(out / "live/plots/metrics/train/loss.tsv", sep="\t")["step"].tolist()


@pytest.fixture()
def kill_after(monkeypatch):
    """Make the run die right after saving its resume state at `step`."""
    def arm(step: int) -> None:
        save = resume_module.Saver.save

        def save_then_die(self, at, *args):
            save(self, at, *args)
            if at == step:
                raise Killed
        monkeypatch.setattr(resume_module.Saver, "save", save_then_die)
    return arm


def test_a_killed_stage_resumes_to_the_same_bytes(tiny_params, data_dir, tmp_path, kill_after, monkeypatch):
    params = _params(tiny_params)
    _train(params, data_dir, tmp_path / "whole")
    kill_after(4)
    with pytest.raises(Killed):
        _train(params, data_dir, tmp_path / "resumed")
    assert not (tmp_path / "resumed/model").exists() and resume_dir(tmp_path / "resumed/model").is_dir()
    assert _steps(tmp_path / "resumed") == [0, 1, 2, 3]
    monkeypatch.undo()
    restarts = []
    monkeypatch.setattr(resume_module.Saver, "restore",
                        lambda self, *a, _r=resume_module.Saver.restore: restarts.append(_r(self, *a)) or restarts[-1])
    _train(params, data_dir, tmp_path / "resumed")
    assert restarts == [4]
    whole, resumed = tmp_path / "whole/model", tmp_path / "resumed/model"
    for name in ("model.safetensors", "params.json"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    assert _steps(tmp_path / "resumed") == _steps(tmp_path / "whole") == list(range(6))
    summary = json.loads((tmp_path / "resumed/live/metrics.json").read_text())  # the run's headline, as DVC shows it
    assert summary == json.loads((tmp_path / "whole/live/metrics.json").read_text()) and list(summary) == ["train"]
    assert not resume_dir(resumed).exists()


def test_a_state_from_other_params_is_ignored(tiny_params, data_dir, tmp_path, kill_after, monkeypatch, caplog):
    params = _params(tiny_params)
    kill_after(4)
    with pytest.raises(Killed):
        _train(params, data_dir, tmp_path)
    monkeypatch.undo()
    params["train"]["lr"] *= 2
    with caplog.at_level(logging.WARNING):
        _train(params, data_dir, tmp_path)
    assert "made by other params, inputs or code; ignored, training starts over" in caplog.text
    assert _steps(tmp_path) == list(range(6))


def test_resume_settings_change_no_result(tiny_params, data_dir, tmp_path):
    params = _params(tiny_params)
    _train(params, data_dir, tmp_path / "a")
    params["resume"] = {"every_steps": None, "every_minutes": None}
    _train(params, data_dir, tmp_path / "b")
    weights = [(tmp_path / run / "model/model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]


def test_sigterm_saves_and_stops_and_the_rerun_finishes_the_same(tiny_params, data_dir, tmp_path, monkeypatch):
    params = _params(tiny_params)
    params["resume"] = {"every_steps": None, "every_minutes": None}  # only the signal saves
    _train(params, data_dir, tmp_path / "whole")
    due = resume_module.Saver.due

    def signal_at_step_3(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return due(self, step)
    monkeypatch.setattr(resume_module.Saver, "due", signal_at_step_3)
    with pytest.raises(SystemExit, match=r"SIGTERM: stopped after step 3; the resume state is in .*model\.resume"):
        _train(params, data_dir, tmp_path / "resumed")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop
    monkeypatch.undo()
    _train(params, data_dir, tmp_path / "resumed")
    assert (tmp_path / "whole/model/model.safetensors").read_bytes() == \
        (tmp_path / "resumed/model/model.safetensors").read_bytes()
    assert _steps(tmp_path / "resumed") == list(range(6))


@pytest.fixture
def oracle_setup(tmp_path, mixed_rows, tiny_params, data_dir):
    """A tiny stage-1 checkpoint, synthetic caches and oracle params that rehearse (the RNG matters)."""
    from cocoracle.model import save_checkpoint
    from conftest import make_tiny_model
    from synthetic import synthetic_cache

    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    checkpoint = tmp_path / "stage-1"
    save_checkpoint(model, tokenizer, checkpoint, {**tiny_params, "stage": 1})
    caches = {split: synthetic_cache(tmp_path / split, n, True, seed, d=32, layer="layer_1", noise=0.3).path
              for split, n, seed in [("train", 200, 0), ("val", 30, 1)]}
    params = _params(tiny_params)
    params["resume"] = {"every_steps": 4, "every_minutes": None}
    params["oracle"].update({"tasks": ["digit"], "source_layer": 1, "inject_layers": None})
    params["oracle"]["self"].update({"finetune": "full", "mix": 0.3})
    for kind in ("self", "separate"):
        params["oracle"][kind]["train"].update({"batch_size": 16, "max_steps": 12, "warmup_steps": 2})
    return checkpoint, caches, params


@pytest.mark.parametrize("kind", ["self", "separate"])
def test_a_killed_oracle_training_resumes_to_the_same_bytes(kind, oracle_setup, data_dir, tmp_path, kill_after,
                                                            monkeypatch):
    from cocoracle.oracle.train import train_oracle

    checkpoint, caches, params = oracle_setup

    def train(out: Path) -> None:
        train_oracle(kind, params, 1, caches, checkpoint, checkpoint, data_dir, out / "oracle", out / "live", CPU)
    train(tmp_path / "whole")
    kill_after(8)  # after validating at steps 3 and 6: the best-on-val weights are part of the state
    with pytest.raises(Killed):
        train(tmp_path / "resumed")
    monkeypatch.undo()
    train(tmp_path / "resumed")
    whole, resumed = tmp_path / "whole/oracle", tmp_path / "resumed/oracle"
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in resumed.iterdir()) and "validation.json" in files
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    curves = tmp_path / "resumed/live/plots/metrics/train"
    steps = [s for tsv in curves.glob("*loss.tsv") for s in pd.read_csv(tsv, sep="\t")["step"]]
    assert sorted(steps) == list(range(12))  # each step logged once, as an oracle or a rehearsal loss
    assert not resume_dir(resumed).exists()

"""Mixed precision and torch.compile: optional numerics of training, checked on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cocoracle.precision import autocast, maybe_compile, precision_of
from cocoracle.train import train_stage
from conftest import tiny_params_dict

CPU = torch.device("cpu")


def test_bf16_mixed_autocasts_matmuls_and_fp32_does_not():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("bf16-mixed", CPU):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert (a @ b).dtype == torch.float32


def test_checkpoints_from_before_the_key_ran_in_fp32():
    assert precision_of({"name": "tiny"}) == "fp32"
    assert precision_of({"precision": "bf16-mixed"}) == "bf16-mixed"


def test_compile_keeps_the_model_object_and_its_state_dict():
    model = torch.nn.Linear(3, 2)
    keys = list(model.state_dict())
    assert maybe_compile(model, True) is model and list(model.state_dict()) == keys
    assert model._compiled_call_impl is not None
    assert maybe_compile(torch.nn.Linear(3, 2), False)._compiled_call_impl is None


def _train(tmp_path, name: str, data_dir, steps: int, val_examples: int = 2, **settings) -> np.ndarray:
    params = tiny_params_dict()
    params["model"]["tiny"]["dropout"] = 0.0
    params["model"]["precision"] = settings.get("precision", "fp32")
    params["train"].update({"max_steps": steps, "val_examples": val_examples,
                            "compile": settings.get("compile", False)})
    train_stage(params, 0, data_dir, None, tmp_path / name, tmp_path / f"live-{name}", CPU)
    lines = (tmp_path / f"live-{name}" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return np.array([float(line.split("\t")[-1]) for line in lines])


def test_bf16_mixed_training_tracks_fp32_and_keeps_fp32_weights(tmp_path, data_dir):
    full = _train(tmp_path, "fp32", data_dir, 4)
    mixed = _train(tmp_path, "bf16", data_dir, 4, precision="bf16-mixed")
    assert not np.array_equal(mixed, full)  # bf16 arithmetic really ran
    np.testing.assert_allclose(mixed, full, rtol=2e-2)
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.float32}


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, data_dir):
    """One step through torch.compile (inductor; about a minute of compiling on two CPU cores)."""
    eager = _train(tmp_path, "eager", data_dir, 1, val_examples=0)
    compiled = _train(tmp_path, "compiled", data_dir, 1, val_examples=0, compile=True)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("eager", "compiled"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)

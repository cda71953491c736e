"""The parameter files shipped beside params.yaml are valid and say what their comments claim."""
from __future__ import annotations

from pathlib import Path

import pytest

from cocoracle.activations import resolve_layers
from cocoracle.config import load_params
from cocoracle.oracle.train import oracle_layers

REPO = Path(__file__).resolve().parents[1]
GPT2_LARGE_LAYERS = 36


@pytest.mark.parametrize("path", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_params_file_validates(path):
    assert load_params(path)["model"]["name"]


def test_gpt2_large_reproduces_the_reference_setting():
    params = load_params(REPO / "params" / "gpt2-large.yaml")
    assert params["model"]["name"] == "gpt2-large" and params["model"]["precision"] == "bf16-mixed"
    assert params["coconut"] == {"num_stages": 3, "thoughts_per_step": 1}
    assert oracle_layers(params["oracle"], GPT2_LARGE_LAYERS) == (18, [17])  # read at 18, injected at 17
    assert params["oracle"]["self"]["alpha"] == 2.0 and params["oracle"]["self"]["mix"] == 0.3
    assert params["oracle"]["self"]["train"]["epochs"] == 5
    assert 18 in resolve_layers(params["activations"]["layers"], GPT2_LARGE_LAYERS)

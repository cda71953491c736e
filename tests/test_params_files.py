"""The parameter files shipped beside params.yaml are valid and resolve to what their comments claim."""
from __future__ import annotations

from pathlib import Path

import pytest

from cocoracle.activations import resolve_layers
from cocoracle.config import load_params
from cocoracle.oracle.train import oracle_layers

REPO = Path(__file__).resolve().parents[1]
GPT2_LARGE_LAYERS = 36  # hidden states 0..36 of gpt2-large: the embeddings and 36 blocks


@pytest.mark.parametrize("path", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_params_file_validates(path):
    assert load_params(path)["model"]["name"]


def test_gpt2_large_reads_the_reference_layers():
    """The reference read gpt2-large's hidden state 18 and injected at 17: the fractions must resolve there,
    and the activation cache must hold the layer the oracle reads."""
    params = load_params(REPO / "params" / "gpt2-large.yaml")
    source, inject = oracle_layers(params["oracle"], GPT2_LARGE_LAYERS)
    assert (source, inject) == (18, [17])
    assert source in resolve_layers(params["activations"]["layers"], GPT2_LARGE_LAYERS)


def test_five_seeds_is_the_default_with_five_seeds():
    """params/five-seeds.yaml differs from params.yaml in run.seeds alone, so the study is the default's."""
    default, study = load_params(REPO / "params.yaml"), load_params(REPO / "params" / "five-seeds.yaml")
    assert study["run"].pop("seeds") == [0, 1, 2, 3, 4] and default["run"].pop("seeds") == [0]
    assert study == default

"""The run comparison of the end-to-end tests: the same bytes pass, the rare last-bit noise passes with a warning,
and anything larger, or any change of text, integers or tensor layout, is named."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from helpers_workflow import differing_outputs, output_difference, within_noise

WEIGHTS = torch.linspace(-2, 3, 400).reshape(20, 20)


def _pair(tmp_path, name: str, ours, theirs):
    """Write two versions of `name` (text, or a dict of tensors) under two run directories."""
    paths = []
    for run, content in (("a", ours), ("b", theirs)):
        path = tmp_path / run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            save_file(content, str(path))
        else:
            path.write_text(content)
        paths.append(path)
    return paths


def _last_bit(t: torch.Tensor) -> torch.Tensor:
    """t with one element moved to the next representable value."""
    out = t.clone()
    out.view(-1)[7] = torch.nextafter(out.view(-1)[7], torch.tensor(float("inf"), dtype=t.dtype))
    return out


@pytest.mark.parametrize(("theirs", "noise"), [
    (_last_bit(WEIGHTS), True),
    (WEIGHTS * (1 + 1e-6), True),
    (WEIGHTS * (1 + 1e-2), False),  # a real difference: another seed or data order moves weights this much
    (WEIGHTS.T.contiguous(), False),
    (WEIGHTS.double(), False),
])
def test_weights_within_noise(tmp_path, theirs, noise):
    a, b = _pair(tmp_path, "models/seed-0/stage-2/model.safetensors", {"w": WEIGHTS}, {"w": theirs})
    assert within_noise(a, b) == noise


def test_cache_tensors_allow_one_float16_step(tmp_path):
    cache = WEIGHTS.half()
    a, b = _pair(tmp_path, "results/seed-0/activations/stage-2/val/shard-00000.safetensors", {"x": cache},
                 {"x": _last_bit(cache)})
    assert within_noise(a, b)
    a, b = _pair(tmp_path, "results/seed-0/activations/stage-2/val/shard-00001.safetensors", {"x": cache},
                 {"x": _last_bit(_last_bit(cache) * 1.01)})
    assert not within_noise(a, b)


@pytest.mark.parametrize(("theirs", "noise"), [
    ("step\tloss\n0\t4.172048568725586\n1\t3.5\n", True),
    ("step\tloss\n0\t4.172048568725591\n1\t3.5\n", True),   # the last digits of a float
    ("step\tloss\n0\t4.18\n1\t3.5\n", False),
    ("step\tloss\n0\t4.172048568725586\n2\t3.5\n", False),   # an integer
    ("step\tlosses\n0\t4.172048568725586\n1\t3.5\n", False),  # a word
])
def test_text_within_noise(tmp_path, theirs, noise):
    a, b = _pair(tmp_path, "results/seed-0/train/stage-2/loss.tsv", "step\tloss\n0\t4.172048568725586\n1\t3.5\n",
                 theirs)
    assert within_noise(a, b) == noise


def test_hashes_of_files_are_not_compared(tmp_path):
    a, b = _pair(tmp_path, "models/seed-0/stage-2/checksums.json", '{"model.safetensors": "' + "ab" * 32 + '"}',
                 '{"model.safetensors": "' + "cd" * 32 + '"}')
    assert within_noise(a, b)


def test_differing_outputs_names_real_differences_and_warns_of_noise(tmp_path):
    _pair(tmp_path, "results/seed-0/eval/stage-2.json", '{"accuracy": 0.5, "n": 40}', '{"accuracy": 0.5, "n": 41}')
    _pair(tmp_path, "models/seed-0/stage-2/model.safetensors", {"w": WEIGHTS}, {"w": _last_bit(WEIGHTS)})
    _pair(tmp_path, "data/train.parquet.txt", "same\n", "same\n")
    (tmp_path / "a/results/only-here.md").write_text("x")
    with pytest.warns(UserWarning, match="model.safetensors.*within run-to-run noise"):
        alone, differ = differing_outputs(tmp_path / "a", tmp_path / "b")
    assert alone == ["results/only-here.md"]
    assert differ == ["results/seed-0/eval/stage-2.json: stage-2.json line 1: "
                      "'{\"accuracy\": 0.5, \"n\": 40}' vs '{\"accuracy\": 0.5, \"n\": 41}'"]
    a, b = (tmp_path / side / "models/seed-0/stage-2/model.safetensors" for side in ("a", "b"))
    with pytest.warns(UserWarning):
        assert output_difference(a, b) is None
    assert output_difference(a, a) is None

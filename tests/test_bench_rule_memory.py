"""scripts/bench_rule_memory.py: its two runs may differ only in the number of problems, or a job's peak-RSS
ratio measures something else (issue 13's memory target)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cocoracle.config import load_params, run_seed, validate_params
from cocoracle.train import batch_stages, micro_batches, stage_optimizer_steps
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _layouts(params: dict, stage: int) -> list[int]:
    """The layout of each micro-batch a capped training stage draws, as cocoracle.train draws them."""
    train = params["train"]
    rng = np.random.default_rng([run_seed(params), stage])
    steps = stage_optimizer_steps(train, stage, params["data"]["n_train"])
    micro_batches(params["data"]["n_train"], train["batch_size"], steps, rng)
    return batch_stages(stage, steps, train["mix_prob"], rng)


@pytest.mark.parametrize("problems", [200, 1024])
def test_both_sizes_draw_the_same_layouts(problems: int) -> None:
    """Every stage's capped steps draw the same layouts at both sizes (with mixing they do not: at 200 vs 800
    problems stage 3 draws no earlier stage in one run and stages 0, 1 and 2 in the other)."""
    scaled_params = load_script("bench_rule_memory").scaled_params
    params = load_params(REPO / "params.yaml")
    small, large = (validate_params(scaled_params(params, n, 20)) for n in (problems, 4 * problems))
    assert (small["data"]["n_train"], large["data"]["n_train"]) == (problems, 4 * problems)
    for stage in range(params["coconut"]["num_stages"] + 1):
        assert _layouts(small, stage) == _layouts(large, stage) == [stage] * 20
    mixed = {**params, "train": {**params["train"], "max_steps": 20}}
    at = [_layouts({**mixed, "data": {**params["data"], "n_train": n}}, 3) for n in (200, 800)]
    assert at[0] != at[1], "the premise: with mixing the layouts depend on the number of problems"

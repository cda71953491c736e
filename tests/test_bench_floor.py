"""scripts/bench_floor.py, issue 13's compute floor: it must count the jobs' real work (the items an oracle
trains on, the FLOPs of a step), or its floor says nothing."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoracle.activations import collect_activations
from cocoracle.cache_reader import ActivationCache
from cocoracle.config import run_seed
from cocoracle.data import load_split, make_splits, problems_table
from cocoracle.model import save_checkpoint
from cocoracle.oracle.data import build_items
from conftest import load_script, make_tiny_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_floor.py"


def test_the_items_it_counts_are_those_a_collected_cache_gives(tmp_path, tiny_params, data_dir, mixed_rows):
    bench = load_script("bench_floor")
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    save_checkpoint(model, tokenizer, tmp_path / "stage-2", {**tiny_params, "stage": 2})
    collect_activations(tiny_params, 2, tmp_path / "stage-2", data_dir, "train", tmp_path / "cache",
                        torch.device("cpu"))
    oracle = tiny_params["oracle"]
    real = build_items(ActivationCache(tmp_path / "cache"), oracle["tasks"], 1,
                       np.random.default_rng([run_seed(tiny_params), 2, 1]))
    rows = problems_table(make_splits(tiny_params["data"])["train"], 0).to_pylist()
    assert rows == load_split(data_dir, "train")
    rebuilt = bench.oracle_items(rows, tiny_params, 2, 1, "self")
    assert len(real) > len(rows)
    assert rebuilt[["problem_id", "thought", "task", "prompt", "target"]].equals(
        real[["problem_id", "thought", "task", "prompt", "target"]])


def test_a_training_steps_flops_are_about_six_per_parameter_and_token(tiny_params, train_rows):
    bench = load_script("bench_floor")
    model, tokenizer = make_tiny_model(train_rows, dtype=torch.float32)
    tiny_params["coconut"]["num_stages"] = 0
    per_stage = bench.coconut_step_flops(model.train(), tokenizer, train_rows, tiny_params, 1,
                                         np.random.default_rng(0))
    codec = bench.Codec(tokenizer)
    rng = np.random.default_rng(0)
    batch = codec.batch([train_rows[i] for i in rng.integers(0, len(train_rows), tiny_params["train"]["batch_size"])],
                        0, 0, 1, **bench.layout_options(tiny_params["coconut"]))
    tokens = batch.prefix_ids.numel() + batch.suffix_ids.numel()
    ratio = per_stage[0] / (6 * model.num_parameters(exclude_embeddings=True) * tokens)
    # forward 2 and backward 4 per weight and token, give or take: attention adds, and the question's last layer
    # has no backward (logits are over the suffix); a count without the backward would be a third of this
    assert 0.75 <= ratio < 1.5


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
def test_it_prints_every_training_job_with_its_measured_share_of_the_matmul_rate(tmp_path):
    logs = tmp_path / "logs"
    for name in ["train/stage-0", "train/stage-1", "train/stage-2", "oracle/train-separate-stage-1",
                 "oracle/train-separate-stage-2", "oracle/train-self-stage-1", "oracle/train-self-stage-2"]:
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text("INFO cocoracle: train done in 12.5 s, peak RSS of this process 500 MB\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--params", str(REPO / "tests" / "smoke-params.yaml"),
                          "--samples", "1", "--logs", str(logs)], capture_output=True, text=True, check=True).stdout
    jobs = re.findall(r"^(train stage \d|separate oracle stage \d|self oracle stage \d) .* 12 +(\d+\.\d)%$", out, re.M)
    assert [job for job, _ in jobs] == ["train stage 0", "train stage 1", "train stage 2", "separate oracle stage 1",
                                        "separate oracle stage 2", "self oracle stage 1", "self oracle stage 2"]
    assert "three seeds' training and stage 2 oracles" in out

"""scripts/bench_gpu.py, issue 13's prepared GPU check: it must run where a GPU session finds it, so it runs here
on the CPU with a tiny model."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_gpu.py"


def test_a_random_gpt2_large_has_gpt2_larges_shape_and_vocabulary():
    bench = load_script("bench_gpu")
    config = bench.random_config("gpt2-large", bench.build_tiny_tokenizer(["12 + 34 = 46"]))
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size) == (36, 1280, 20, 50257)


@pytest.mark.slow  # a script or an engine in a subprocess: the full suite's
def test_it_trains_a_random_model_of_a_local_config_and_prints_its_mfu(tmp_path):
    config = GPT2Config(n_layer=3, n_embd=48, n_head=2, vocab_size=10, n_positions=128, bos_token_id=None,
                        eos_token_id=None)
    config.save_pretrained(tmp_path / "base")
    non_embedding = GPT2LMHeadModel(config).num_parameters(exclude_embeddings=True)
    params = yaml.safe_load((REPO / "tests" / "smoke-params.yaml").read_text())
    params["model"]["name"] = str(tmp_path / "base")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, str(SCRIPT), "--params", str(tmp_path / "params.yaml"), "--random",
                          "--steps", "2", "--warmup", "1", "--device", "cpu"],
                         check=True, capture_output=True, text=True).stdout
    assert f"(random weights) non-embedding params={non_embedding:,} " in out, out
    assert re.search(r"[\d,]+ tokens/s", out) and re.search(r"MFU \d+\.\d%", out), out
    assert re.search(r"peak memory \d+\.\d\d GiB", out), out

"""The CLI around the steps: --version, `ask`'s defaults and its no-answer sentence, a closed stdout, and step
logs free of third-party progress bars and warnings."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib.metadata import version

import pytest
import torch
import yaml

from cocoracle.cli import main
from cocoracle.config import InputError
from cocoracle.model import save_checkpoint
from cocoracle.oracle.ask import answer_line, default_paths
from cocoracle.oracle.train import build_oracle, save_oracle
from conftest import REPO, cocoracle_command, make_tiny_model, run_cli, tiny_params_dict

CPU = torch.device("cpu")


def test_version_is_the_installed_packages():
    done = run_cli("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"cocoracle {version('cocoracle')}\n", "")


def _workspace(path, num_stages: int = 2, oracle_stages="all", models_dir: str = "models") -> dict:
    """A workspace's config.yaml (models under models_dir, params in p.yaml) and its params; the params."""
    params = tiny_params_dict()
    params["coconut"]["num_stages"] = num_stages
    params["oracle"]["stages"] = oracle_stages
    params["train"]["epochs"] = 1
    (path / "p.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = {**yaml.safe_load((REPO / "config.yaml").read_text()), "params_file": "p.yaml", "models_dir": models_dir}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return params


def test_ask_defaults_are_the_last_stage_and_its_oracle_where_the_pipeline_writes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path, num_stages=2, models_dir="out/models")
    assert default_paths("config.yaml") == ("out/models/seed-0/stage-2", "out/models/seed-0/oracle/self/stage-2")
    assert default_paths("config.yaml", kind="separate") == ("out/models/seed-0/stage-2",
                                                             "out/models/seed-0/oracle/separate/stage-2")
    assert default_paths("config.yaml", stage=1) == ("out/models/seed-0/stage-1",
                                                     "out/models/seed-0/oracle/self/stage-1")
    _workspace(tmp_path, num_stages=3, oracle_stages=[1, 2], models_dir="m")  # no oracle at the last stage
    assert default_paths("config.yaml") == ("m/seed-0/stage-2", "m/seed-0/oracle/self/stage-2")
    with pytest.raises(InputError, match=r"--stage 3: no oracle at this stage \(p.yaml oracle.stages: 1, 2\)"):
        default_paths("config.yaml", stage=3)
    with pytest.raises(InputError, match=r"--stage 4: p.yaml trains stages 0..3"):
        default_paths("config.yaml", stage=4)
    _workspace(tmp_path, num_stages=0)
    with pytest.raises(InputError, match="coconut.num_stages is 0"):
        default_paths("config.yaml")


def test_ask_without_paths_reads_the_last_stages_checkpoint_with_its_oracle(tmp_path, monkeypatch, mixed_rows,
                                                                           capsys):
    """On params with 2 stages, `cocoracle ask` alone finds models/seed-0/stage-2 and its self-oracle; the random
    model writes no answer, which is said in a sentence."""
    params = _workspace(tmp_path, num_stages=2)
    run = tmp_path / "models" / "seed-0"
    checkpoint, oracle_dir = run / "stage-2", run / "oracle" / "self" / "stage-2"
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    save_checkpoint(model, tokenizer, checkpoint, {**params, "stage": 2})
    oracle, oracle_tokenizer, spec = build_oracle("self", params, 2, checkpoint, None, 32, CPU)
    save_oracle(oracle, oracle_tokenizer, spec, checkpoint, oracle_dir, {})
    monkeypatch.chdir(tmp_path)
    assert main(["ask", "12 + 34", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("12 + 34: the model wrote no answer ('"), out
    assert "', where an answer is '###' then a number of at most 18 digits; true 46) after 2 latent thoughts " \
        "(stage 2)\n" in out, out
    assert "oracle models/seed-0/oracle/self/stage-2 (layer" in out, out
    shutil.rmtree(oracle_dir)
    assert main(["ask", "12 + 34", "--device", "cpu"]) == 2
    assert ("models/seed-0/oracle/self/stage-2: not made yet (run the pipeline: snakemake --cores all), or pass "
            "--oracle" in capsys.readouterr().err)


def test_the_answer_line_says_what_the_model_answered():
    assert answer_line(12, 34, " 2 + 4 = 6 ### 46", 46) == "12 + 34: model answers 46 (correct)"
    assert answer_line(12, 34, " ### 47", 47) == "12 + 34: model answers 47 (wrong, true 46)"
    assert answer_line(12, 34, " 2 + 4 = 6\n1 + 3", None) == (
        "12 + 34: the model wrote no answer ('2 + 4 = 6 1 + 3', where an answer is '###' then a number of at most "
        "18 digits; true 46)")
    long = answer_line(12, 34, "9 " * 100, None)
    assert "'" + "9 " * 28 + "9...'" in long and "None" not in long


def _big_metrics(path) -> None:
    """A metrics file whose provenance prints ~400 kB: far more than a pipe holds."""
    inputs = {f"results/input-{i:05d}": "0" * 64 for i in range(5000)}
    path.write_text(json.dumps({"provenance": {"git_revision": "abc", "inputs": inputs}}))


def test_provenance_into_head_ends_quietly(tmp_path):
    _big_metrics(tmp_path / "m.json")
    command = " ".join(cocoracle_command())
    done = subprocess.run(["bash", "-c", f"{command} provenance m.json 2>err.txt | head -1; echo ${{PIPESTATUS[0]}}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout == "git revision: abc\n1\n", done.stdout
    assert (tmp_path / "err.txt").read_text() == ""


@pytest.mark.parametrize("args", [["--version"], ["check-params", "--params", str(REPO / "params.yaml")],
                                  ["provenance", "m.json"]])
def test_a_closed_stdout_gives_no_traceback(tmp_path, args):
    """stdout a pipe nobody reads any more: the command's first write fails; it exits 1 with nothing on stderr."""
    _big_metrics(tmp_path / "m.json")
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*cocoracle_command(), *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


# what an oracle training printed before (a smoke run's step logs): transformers' weight-loading bar, peft's and
# transformers' warnings about their own internals
NOISE = ["Loading weights", "Writing model shards", "it/s]Loading", "Warning:", "warnings.warn", "fan_in_fan_out",
         "save_embedding_layers", "is_gradient_checkpointing", "[transformers]"]


def test_a_step_log_holds_no_third_party_progress_bars_or_warnings(tmp_path, mixed_rows, data_dir):
    """A real separate-oracle training (LoRA over a checkpoint, a few steps): its stderr (a SLURM job's or `dvc
    repro`'s log) and its --log file have no transformers or peft bars or warnings; its own bar is still there."""
    from synthetic import synthetic_cache

    params = tiny_params_dict()
    params["oracle"].update({"tasks": ["digit"], "source_layer": 1, "inject_layers": None})
    params["oracle"]["separate"]["train"].update({"max_steps": 2, "warmup_steps": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    save_checkpoint(model, tokenizer, tmp_path / "stage-1", {**params, "stage": 1})
    for split, n, seed in [("train", 100, 0), ("val", 20, 1)]:
        synthetic_cache(tmp_path / split, n, True, seed, d=32, layer="layer_1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "HF_", "PYTHONWARNINGS"))}
    done = subprocess.run(
        [*cocoracle_command(), "train-oracle", "--params", "params.yaml", "--kind", "separate", "--stage", "1",
         "--checkpoint", "stage-1", "--base", "stage-1", "--train", "train", "--val", "val", "--data", str(data_dir),
         "--out", "oracle", "--live", "live", "--device", "cpu", "--log", "train.log"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**env, "CI": "1"})  # CI: transformers'
    assert done.returncode == 0, done.stderr  # logger then propagates to the log file too
    log = (tmp_path / "train.log").read_text()
    assert "train-oracle done in" in log
    assert "separate oracle stage 1: 100%" in done.stderr  # the project's own bar, on the terminal
    for text in (done.stderr, log):
        assert not [noise for noise in NOISE if noise in text], text


def test_ask_says_when_it_read_other_digits_as_ascii(tmp_path, monkeypatch, mixed_rows, capsys):
    """Arabic-Indic digits are answered as the ASCII sum they stand for, and the first line says so."""
    params = _workspace(tmp_path, num_stages=1)
    run = tmp_path / "models" / "seed-0"
    checkpoint, oracle_dir = run / "stage-1", run / "oracle" / "self" / "stage-1"
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    save_checkpoint(model, tokenizer, checkpoint, {**params, "stage": 1})
    oracle, oracle_tokenizer, spec = build_oracle("self", params, 1, checkpoint, None, 32, CPU)
    save_oracle(oracle, oracle_tokenizer, spec, checkpoint, oracle_dir, {})
    monkeypatch.chdir(tmp_path)
    assert main(["ask", "\u0661\u0662 + \u0663\u0664", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "read '\u0661\u0662 + \u0663\u0664' as 12 + 34 (its digits written in ASCII)", lines
    assert lines[1].startswith("12 + 34: "), lines

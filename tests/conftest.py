"""Shared fixtures: for the unit tests tiny parameters, a tiny data set and tiny models; for the end-to-end tests
the smoke DAG finished once per session by each engine.

The unit fixtures are sized so that the fast loop (`python -m pytest -q`: no e2e, no slow tests) stays within
about 3 minutes on two CPU cores. Every end-to-end module shares the two finished smoke runs instead of running its
own DAG: a test reads `snakemake_repo` / `dvc_repo` (shared, put back whatever it changes) or takes a copy of its
own (`snakemake_copy` / `dvc_copy`) to change; `snakemake_run` / `dvc_run` are the untouched originals that runs are
compared with. The DVC run, whose stages run one at a time on one core, starts in the background when the first
test starts, and the end-to-end tests run last: the unit tests use the other core meanwhile.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# isort: off
import cocoracle  # noqa: F401  first: it pins MKL's reproducible mode, which torch's first import fixes
import torch

# isort: on
from cocoracle.config import read_yaml, validate_params
from fastloop import pytest_addoption, pytest_report_header  # noqa: F401  the hooks
from fastloop import pytest_collection_modifyitems as fastloop_selection

# Tiny models are much faster on one thread, and a busy machine makes several threads slower still.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PARAMS_YAML = REPO / "params.yaml"

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 96}


def tiny_params_dict() -> dict:
    """params.yaml with every size shrunk: 1-, 2- and 3-digit problems, a 2-layer GPT-2, a few steps."""
    params = copy.deepcopy(read_yaml(PARAMS_YAML))
    params["data"].update({"seed": 0, "test_seed": 1, "digits": [1, 2, 3], "digit_probs": [0.2, 0.4, 0.4],
                           "ood_digits": 4, "n_train": 100, "n_val": 10, "n_dev": 10, "n_test": 10, "n_ood": 10})
    params["model"].update({"name": "tiny", "dtype": "float32"})
    params["model"]["tiny"] = {**(params["model"].get("tiny") or {}), **TINY}
    params["coconut"].update({"num_stages": 3, "thoughts_per_step": 1})
    params["train"].update({"batch_size": 8, "grad_accum": 1, "lr": 0.003, "weight_decay": 0.0,
                            "warmup_steps": 1, "schedule": "cosine", "grad_clip": 1.0, "epochs": 1,
                            "max_steps": 3, "mix_prob": 0.0, "val_examples": 3})
    params["evaluate"].update({"batch_size": 16, "extra_tokens": 8, "splits": ["val", "dev", "ood"]})
    params["oracle"].update({"max_new_tokens": 16, "batch_size": 32})
    for kind in ("separate", "self"):
        params["oracle"][kind]["lora"].update({"r": 4, "alpha": 8})
        params["oracle"][kind]["train"].update({"batch_size": 8, "max_steps": 4, "warmup_steps": 1})
    params["run"].update({"seeds": [0], "threads": 2, "held_out": "dev"})
    return validate_params(params, source="tiny params")


@pytest.fixture
def tiny_params() -> dict:
    """A fresh (mutable) copy of the tiny parameters."""
    return tiny_params_dict()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The tiny parameters' problems, generated once: <split>.parquet."""
    from cocoracle.data import write_splits

    out = tmp_path_factory.mktemp("data")
    write_splits(tiny_params_dict()["data"], out)
    return out


@pytest.fixture(scope="session")
def train_rows(data_dir) -> list[dict]:
    from cocoracle.data import load_split

    return load_split(data_dir, "train")


@pytest.fixture(scope="session")
def mixed_rows() -> list[dict]:
    """Hand-picked problems of 1, 2 and 3 digits (with and without a final carry), so that batches
    need padding on both the question (left) and the remaining-steps (right) side."""
    from cocoracle.data import problems_table

    pairs = [(7, 5), (38, 64), (905, 187), (4, 3), (12, 80), (999, 1), (56, 7)]
    return problems_table(pairs, 0).to_pylist()


def make_tiny_model(rows: list[dict], seed: int = 0, dtype: torch.dtype = torch.float64):
    """A freshly initialised tiny GPT-2 and its word-level tokenizer, in eval mode."""
    from cocoracle.model import initial_model

    model, tokenizer = initial_model(tiny_params_dict()["model"], rows, seed)
    return model.to(dtype).eval(), tokenizer


@pytest.fixture
def tiny_model(mixed_rows):
    """(model in float64, tokenizer) over the mixed problems' vocabulary."""
    return make_tiny_model(mixed_rows)


def cocoracle_command() -> list[str]:
    """The installed `cocoracle` console script, else `python -m cocoracle.cli`."""
    script = Path(sys.executable).parent / "cocoracle"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("cocoracle")
    return [found] if found else [sys.executable, "-m", "cocoracle.cli"]


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ put on sys.path: the scripts import their siblings)."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*cocoracle_command(), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _plain_tokenizer(rows: list[dict]):
    """A word-level tokenizer like the tiny one, but without the Coconut markers and without a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    texts = ["| ###"] + [t for r in rows for t in (r["question"], *r["steps"], str(r["answer"]))]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<eos>", "<unk>"], min_frequency=1))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def local_model_dir(tmp_path_factory, mixed_rows):
    """(directory, vocabulary size, tokenizer) of a 'pretrained' GPT-2 (d=32) saved the Hugging Face way."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _plain_tokenizer(mixed_rows)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("pretrained")
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, len(tokenizer), tokenizer



# ----------------------------------------------------------------------------------------------------------------
# End to end: the smoke DAG (tests/smoke-params.yaml) finished once per session by each engine


@dataclass(frozen=True)
class FinishedRun:
    """A finished smoke run: its repository (a temporary copy of this one, one commit) and the engine's output."""

    repo: Path
    log: str


def _finished(tmp_path_factory, name: str, command: list[str]) -> FinishedRun:
    from helpers_workflow import repo_copy, run

    repo = repo_copy(tmp_path_factory.mktemp(name))
    proc = run(command, cwd=repo, timeout=3600)
    return FinishedRun(repo, proc.stdout + proc.stderr)


@dataclass(frozen=True)
class BackgroundRun:
    """A smoke run going on beside the tests: `dvc repro` runs its stages one at a time on one core, so it is
    started once the tests are collected and the tests that do not need it run on the other core meanwhile."""

    repo: Path
    log: Path
    process: subprocess.Popen

    def finished(self, timeout: int = 3600) -> FinishedRun:
        """Wait for the run; fail with the end of its log if it failed."""
        code = self.process.wait(timeout=timeout)
        log = self.log.read_text()
        assert code == 0, f"`dvc repro` failed ({code}) in {self.repo}:\n{log[-8000:]}"
        return FinishedRun(self.repo, log)


@pytest.fixture(scope="session", autouse=True)
def background_dvc_run(request, tmp_path_factory):
    """Start the session's DVC smoke run when the first test starts, if any selected test needs it."""
    if not any("dvc_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    from helpers_workflow import engine_env, repo_copy

    repo = repo_copy(tmp_path_factory.mktemp("dvc"))
    log = tmp_path_factory.mktemp("dvc-log") / "dvc-repro.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["dvc", "repro"], cwd=repo, env=engine_env(), stdout=out,
                                   stderr=subprocess.STDOUT)
    yield BackgroundRun(repo, log, process)
    if process.poll() is None:  # the session ended (or stopped) before a test needed it
        process.terminate()
        process.wait(timeout=60)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast loop's choice (fastloop.py), then the end-to-end tests last, so that the unit tests run beside the
    background DVC run."""
    fastloop_selection(config, items)
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


@pytest.fixture(scope="session")
def snakemake_run(tmp_path_factory) -> FinishedRun:
    """The smoke DAG run once per session by `snakemake --cores 2`: the original every comparison uses. No test
    changes anything in it; to change a run, take `snakemake_copy`."""
    return _finished(tmp_path_factory, "smk", ["snakemake", "--cores", "2"])


@pytest.fixture(scope="session")
def dvc_run(background_dvc_run: BackgroundRun) -> FinishedRun:
    """The smoke DAG run once per session by `dvc repro` (the same params and threads as `snakemake_run`), started
    in the background when the session's first test started. No test changes anything in it; to change a run,
    take `dvc_copy`."""
    return background_dvc_run.finished()


def _copy(run: FinishedRun, parent: Path) -> Path:
    from helpers_workflow import copy_run

    return copy_run(run.repo, parent / "repo")


@pytest.fixture(scope="session")
def snakemake_repo(snakemake_run, tmp_path_factory) -> Path:
    """A copy of the finished Snakemake run shared by the session's tests: read it, or change it and put back what
    you changed (a `try`/`finally`); a test that leaves a change behind takes `snakemake_copy` instead."""
    return _copy(snakemake_run, tmp_path_factory.mktemp("smk-shared"))


@pytest.fixture(scope="session")
def dvc_repo(dvc_run, tmp_path_factory) -> Path:
    """A copy of the finished DVC run shared by the session's tests, on the terms of `snakemake_repo`."""
    return _copy(dvc_run, tmp_path_factory.mktemp("dvc-shared"))


@pytest.fixture
def snakemake_copy(snakemake_run, tmp_path) -> Path:
    """This test's own copy of the finished Snakemake run, to change (a second or two to make)."""
    return _copy(snakemake_run, tmp_path)


@pytest.fixture
def dvc_copy(dvc_run, tmp_path) -> Path:
    """This test's own copy of the finished DVC run, to change."""
    return _copy(dvc_run, tmp_path)

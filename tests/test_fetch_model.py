"""A pretrained base: model.revision pins a hub id, `cocoracle fetch-model` downloads it (a local rule under
SLURM) before training, stage 0 and the separate oracle declare and load the fetched or local directory, and
their provenance names the base, its revision and its weights' hashes.

No hub is reachable here: the download is a fake `snapshot_download`, and the models are a small GPT-2 with a
byte-level BPE tokenizer built in the test (the kind of tokenizer a hub GPT-2 has)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml

from cocoracle import cli
from cocoracle.atomic import is_temporary
from cocoracle.config import InputError, validate_params
from cocoracle.data import problems_table
from cocoracle.dvc_yaml import dvc_stages
from cocoracle.fetch import ALLOW_PATTERNS, SOURCE
from cocoracle.model import CHECKSUMS, MARKERS
from cocoracle.provenance import format_record, read
from cocoracle.steps import Layout, jobs
from conftest import REPO, cocoracle_command, run_cli, tiny_params_dict
from helpers_workflow import repo_copy, run, set_param

CPU = torch.device("cpu")
SHA = "0123456789abcdef0123456789abcdef01234567"
HUB_ID = "some-org/tiny-gpt2"
CONFIG = {"params_file": "params.yaml", "data_dir": "data", "models_dir": "models", "results_dir": "results",
          "logs_dir": "logs", "benchmarks_dir": "benchmarks", "train_processes": 1}
EOS = "<|endoftext|>"


def build_bpe_gpt2(out: Path, n_embd: int = 32) -> Path:
    """A 'pretrained' GPT-2 (2 layers) with a byte-level BPE tokenizer trained on addition text, saved the
    Hugging Face way (config.json, model.safetensors, tokenizer.json): what a fetched hub GPT-2 looks like."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from cocoracle.model import corpus_texts

    rows = problems_table([(a, b) for a in (7, 38, 905, 4127) for b in (5, 64, 187, 999)], 0).to_pylist()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(list(corpus_texts(rows)) * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=n_embd, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory) -> Path:
    return build_bpe_gpt2(tmp_path_factory.mktemp("bpe-gpt2") / "model")


def _params(**model) -> dict:
    params = tiny_params_dict()
    params["model"].update(model)
    return params


def _one_line_error(params: dict, tmp_path: Path, key: str) -> str:
    """check-params fails with one line naming `key`; returns that line."""
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    result = run_cli("check-params", "--params", file)
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.splitlines()) == 1 and f": {key}: " in result.stderr, result.stderr
    return result.stderr


# --- params ---------------------------------------------------------------------------------------------

def test_a_hub_id_without_a_revision_is_a_one_line_error_naming_the_key(tmp_path):
    line = _one_line_error(_params(name=HUB_ID), tmp_path, "model.revision")
    assert HUB_ID in line and "commit sha" in line
    params = tiny_params_dict()
    params["oracle"]["separate"]["base"] = HUB_ID
    assert HUB_ID in _one_line_error(params, tmp_path, "oracle.separate.revision")


@pytest.mark.parametrize("revision", ["main", "v1.0", SHA[:12], SHA.upper()])
def test_a_branch_tag_or_short_sha_is_refused(tmp_path, revision):
    """Only a full commit sha pins the weights: a branch or a tag can be moved to other ones."""
    assert "40-character sha" in _one_line_error(_params(name=HUB_ID, revision=revision), tmp_path, "model.revision")


def test_a_revision_without_a_hub_id_is_refused(tmp_path, bpe_model_dir):
    assert "local directory" in _one_line_error(_params(name=str(bpe_model_dir), revision=SHA), tmp_path,
                                                "model.revision")
    assert "'tiny'" in _one_line_error(_params(revision=SHA), tmp_path, "model.revision")
    params = tiny_params_dict()
    params["oracle"]["separate"]["revision"] = SHA
    assert "'stage-0'" in _one_line_error(params, tmp_path, "oracle.separate.revision")


def test_pinned_hub_ids_and_local_directories_validate(bpe_model_dir):
    validate_params(_params(name=HUB_ID, revision=SHA))
    validate_params(_params(name=str(bpe_model_dir), revision=None))
    params = tiny_params_dict()
    params["oracle"]["separate"].update(base=HUB_ID, revision=SHA)
    validate_params(params)


def test_shipped_hub_params_pin_a_commit():
    params = yaml.safe_load((REPO / "params" / "gpt2-large.yaml").read_text())
    assert params["model"]["name"] == "gpt2-large" and len(params["model"]["revision"]) == 40


# --- the fetch step ------------------------------------------------------------------------------------

class FakeHub:
    """snapshot_download as huggingface_hub's: the allowed files into local_dir, with its .cache bookkeeping."""

    def __init__(self, source: Path, out: Path, error: Exception | None = None):
        self.source, self.out, self.error, self.calls = source, out, error, []

    def __call__(self, repo_id, *, revision=None, local_dir=None, allow_patterns=None, **kwargs):
        import fnmatch

        self.calls.append({"repo_id": repo_id, "revision": revision, "local_dir": Path(local_dir),
                           "allow_patterns": allow_patterns, **kwargs})
        # atomic: the download goes to a temporary beside the output, never to the output itself
        assert is_temporary(local_dir) and Path(local_dir).parent == self.out.parent
        assert not self.out.exists() or (self.out / "old.txt").is_file()
        if self.error is not None:
            (Path(local_dir) / "model.safetensors").write_bytes(b"half a download")
            raise self.error
        for file in self.source.iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                shutil.copy(file, Path(local_dir) / file.name)
        meta = Path(local_dir) / ".cache" / "huggingface" / "download"
        meta.mkdir(parents=True)
        (meta / "model.safetensors.metadata").write_text("etag and a timestamp")
        return str(local_dir)


def _fetch(tmp_path: Path, monkeypatch, params: dict, which: str, hub: FakeHub) -> int:
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.chdir(tmp_path)
    return cli.main(["fetch-model", "--params", str(file), "--which", which, "--out", str(hub.out)])


def test_fetch_downloads_the_pinned_revision_atomically(tmp_path, monkeypatch, bpe_model_dir):
    source = tmp_path / "hub"
    shutil.copytree(bpe_model_dir, source)
    (source / "flax_model.msgpack").write_bytes(b"weights in another format")
    out = tmp_path / "models" / "base" / "model"
    hub = FakeHub(source, out)
    assert _fetch(tmp_path, monkeypatch, _params(name=HUB_ID, revision=SHA), "model", hub) == 0
    [call] = hub.calls
    assert (call["repo_id"], call["revision"]) == (HUB_ID, SHA)
    assert "*.safetensors" in call["allow_patterns"] and "config.json" in call["allow_patterns"]
    assert not any(p.endswith((".bin", ".msgpack", ".h5", ".pt")) for p in call["allow_patterns"])
    fetched = sorted(p.name for p in out.iterdir())
    assert fetched == sorted([p.name for p in bpe_model_dir.iterdir()] + [SOURCE])  # not the .msgpack, no .cache
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(fetched)
    assert json.loads((out / SOURCE).read_text()) == {"name": HUB_ID, "revision": SHA}
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no temporary left beside it
    assert (out / "model.safetensors").read_bytes() == (bpe_model_dir / "model.safetensors").read_bytes()


def test_fetch_of_the_separate_oracles_base_reads_its_own_keys(tmp_path, monkeypatch, bpe_model_dir):
    params = tiny_params_dict()
    params["oracle"]["separate"].update(base="other-org/base", revision=SHA[::-1])
    hub = FakeHub(bpe_model_dir, tmp_path / "models" / "base" / "oracle")
    assert _fetch(tmp_path, monkeypatch, params, "oracle", hub) == 0
    assert [(c["repo_id"], c["revision"]) for c in hub.calls] == [("other-org/base", SHA[::-1])]


def test_a_failed_fetch_is_one_line_and_keeps_the_previous_directory(tmp_path, monkeypatch, capsys, bpe_model_dir):
    from huggingface_hub.errors import LocalEntryNotFoundError

    out = tmp_path / "models" / "base" / "model"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("the previous fetch")
    error = LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub and we cannot "
                                    "find the appropriate snapshot folder for the specified revision on the local "
                                    "disk. Please check your internet connection and try again.")
    hub = FakeHub(bpe_model_dir, out, error)
    assert _fetch(tmp_path, monkeypatch, _params(name=HUB_ID, revision=SHA), "model", hub) == 2
    err = capsys.readouterr().err  # the log's lines, then the error's one line
    [line] = [line for line in err.splitlines() if line.startswith("cocoracle fetch-model: error: ")]
    assert line.startswith(f"cocoracle fetch-model: error: model.name: cannot fetch '{HUB_ID}' at model.revision "
                           f"{SHA} (An error happened") and "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]


def test_an_unreachable_hub_is_a_one_line_error_with_the_real_library(tmp_path):
    """No fake here: huggingface_hub itself, offline (as a compute node is), with an empty cache."""
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(_params(name=HUB_ID, revision=SHA)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([*cocoracle_command(), "fetch-model", "--params", str(file), "--which", "model", "--out",
                             str(tmp_path / "models/base/model")], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith(f"cocoracle fetch-model: error: model.name: cannot fetch '{HUB_ID}' at model.revision "
                           f"{SHA} (") and "Traceback" not in result.stderr
    base = tmp_path / "models" / "base"
    assert not base.exists() or list(base.iterdir()) == []  # nothing half-fetched left


def test_a_snapshot_without_safetensors_is_refused(tmp_path, monkeypatch, capsys):
    source = tmp_path / "hub"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "pytorch_model.bin").write_bytes(b"pickled weights")
    out = tmp_path / "models" / "base" / "model"
    assert _fetch(tmp_path, monkeypatch, _params(name=HUB_ID, revision=SHA), "model", FakeHub(source, out)) == 2
    assert "no config.json or no safetensors weights" in capsys.readouterr().err
    assert not out.exists()


def test_fetch_patterns_cover_what_loading_needs():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"):
        assert any(Path(name).match(pattern) for pattern in ALLOW_PATTERNS), name


# --- the step table: both engines' DAG ----------------------------------------------------------------

def _layout(params: dict) -> Layout:
    return Layout.from_config(CONFIG, params, REPO)


def _jobs(params: dict) -> dict[tuple, tuple]:
    """The jobs of the first seed (and those no seed has), by (step, wildcard values but the seed)."""
    layout = _layout(params)
    first = layout.seeds[0]
    return {(step.name, *(v for k, v in wildcards.items() if k != "seed")): step.resolve(layout, wildcards)
            for step, wildcards in jobs(layout) if wildcards.get("seed", first) == first}


def test_a_hub_model_is_fetched_once_before_stage_0_which_declares_and_loads_it():
    found = _jobs(_params(name=HUB_ID, revision=SHA))
    fetch, command = found[("fetch_model", "model")]
    assert command.startswith("cocoracle fetch-model --params params.yaml --which model --out models/base/model")
    assert fetch.params == ["model.name", "model.revision"]
    assert [key for key in found if key[0] == "fetch_model"] == [("fetch_model", "model")]
    stage0, command = found[("train_stage", 0)]
    assert stage0.inputs["base"] == ["models/base/model"] and " --base models/base/model " in command
    assert found[("train_stage", 1)][0].inputs["base"] == [] and "--base" not in found[("train_stage", 1)][1]
    assert "model" in stage0.params  # model.revision among them: a new revision retrains stage 0


def test_the_separate_oracles_hub_base_is_fetched_and_declared():
    params = _params(name=HUB_ID, revision=SHA)
    params["oracle"]["separate"].update(base="other-org/base", revision=SHA[::-1])
    found = _jobs(params)
    assert found[("fetch_model", "oracle")][0].params == ["oracle.separate.base", "oracle.separate.revision"]
    separate, command = found[("train_oracle", "separate", 1)]
    assert separate.inputs["base"] == ["models/base/oracle"] and " --base models/base/oracle " in command
    assert found[("train_oracle", "self", 1)][0].inputs["base"] == []
    # the same model at the same revision as model.name: one fetch, shared
    params["oracle"]["separate"].update(base=HUB_ID, revision=SHA)
    found = _jobs(params)
    assert [key for key in found if key[0] == "fetch_model"] == [("fetch_model", "model")]
    assert found[("train_oracle", "separate", 1)][0].inputs["base"] == ["models/base/model"]
    # a hub base for the oracle only
    params = tiny_params_dict()
    params["oracle"]["separate"].update(base=HUB_ID, revision=SHA)
    found = _jobs(params)
    assert [key for key in found if key[0] == "fetch_model"] == [("fetch_model", "oracle")]
    assert found[("train_stage", 0)][0].inputs["base"] == []


def test_a_local_base_directory_is_declared_file_by_file_and_not_fetched(bpe_model_dir):
    """Snakemake dates a directory input by the directory's own mtime, which replacing a file inside it does not
    change: the files are what both engines must watch."""
    files = sorted(str(p) for p in bpe_model_dir.iterdir())
    params = _params(name=str(bpe_model_dir))
    params["oracle"]["separate"]["base"] = str(bpe_model_dir)
    found = _jobs(params)
    assert not [key for key in found if key[0] == "fetch_model"]
    stage0, command = found[("train_stage", 0)]
    assert stage0.inputs["base"] == files and f" --base {bpe_model_dir} " in command
    assert found[("train_oracle", "separate", 2)][0].inputs["base"] == files
    assert f"{bpe_model_dir}/model.safetensors" in dvc_stages(_layout(params))["stages"]["train_stage_0_seed_0"]["deps"]


def test_the_tiny_model_fetches_nothing():
    found = _jobs(tiny_params_dict())
    assert not [key for key in found if key[0] == "fetch_model"]
    assert found[("train_stage", 0)][0].inputs["base"] == [] and "--base" not in found[("train_stage", 0)][1]
    assert found[("train_oracle", "separate", 1)][0].inputs["base"] == ["models/seed-0/stage-0"]


def test_dvc_yaml_has_the_fetch_stage_and_stage_0_depends_on_it():
    stages = dvc_stages(_layout(_params(name=HUB_ID, revision=SHA)))["stages"]
    assert list(stages)[:2] == ["generate", "fetch_model_base"]
    fetch = stages["fetch_model_base"]
    assert fetch["params"] == [{"params.yaml": ["model.name", "model.revision"]}]
    assert fetch["outs"] == [{"models/base/model": {"persist": True}}]
    assert "cocoracle/fetch.py" in fetch["deps"] and not any("torch" in dep for dep in fetch["deps"])
    assert "models/base/model" in stages["train_stage_0_seed_0"]["deps"]


def test_the_fetch_rule_is_a_local_rule():
    """Under SLURM a local rule runs where Snakemake runs (the login node, which has the internet)."""
    text = (REPO / "workflow" / "rules" / "fetch.smk").read_text()
    assert "localrules:\n    fetch_model," in text
    assert 'include: "rules/fetch.smk"' in (REPO / "workflow" / "Snakefile").read_text()


# --- loading and provenance ---------------------------------------------------------------------------

def _bpe_params(name: str, revision: str | None) -> dict:
    params = tiny_params_dict()
    params["model"].update(name=name, revision=revision)
    params["train"].update(max_steps=2, val_examples=2)
    return params


def test_stage_0_loads_the_base_directory_offline_with_the_markers_and_records_it(tmp_path, monkeypatch,
                                                                                 bpe_model_dir, data_dir):
    """A 'fetched' hub model: loaded from its directory (no hub call: any would fail here), its byte-level BPE
    tokenizer given the Coconut markers, and the checkpoint's provenance naming the id, revision and hashes."""
    from cocoracle.train import train_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tmp_path / "models" / "base" / "model"
    shutil.copytree(bpe_model_dir, base)
    params = _bpe_params(HUB_ID, SHA)
    out = tmp_path / "stage-0"
    train_stage(params, 0, data_dir, None, out, tmp_path / "live", CPU, base=base)
    tokenizer_vocab = json.loads((out / "tokenizer.json").read_text())
    assert {t["content"] for t in tokenizer_vocab["added_tokens"]} >= set(MARKERS)
    assert tokenizer_vocab["model"]["type"] == "BPE"
    record = read(out)
    assert record["base"]["name"] == HUB_ID and record["base"]["revision"] == SHA
    from cocoracle.atomic import sha256

    assert record["base"]["weights_sha256"] == {"model.safetensors": sha256(base / "model.safetensors")}
    assert str(base) in record["inputs"]
    shown = run_cli("provenance", out).stdout
    assert f"base model: {HUB_ID} at revision {SHA}" in shown and sha256(base / "model.safetensors") in shown
    assert CHECKSUMS in {p.name for p in out.iterdir()}


def test_stage_0_refuses_a_missing_base_directory_in_one_line(tmp_path, data_dir):
    from cocoracle.train import train_stage

    params = _bpe_params(HUB_ID, SHA)
    with pytest.raises(InputError, match=r"no/such/dir: no such model directory \(--base") as info:
        train_stage(params, 0, data_dir, None, tmp_path / "o", tmp_path / "l", CPU, base=tmp_path / "no/such/dir")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="--base: only stage 0 of a pretrained model.name"):
        train_stage(tiny_params_dict(), 0, data_dir, None, tmp_path / "o", tmp_path / "l", CPU, base=tmp_path)


def test_the_separate_oracles_provenance_names_its_base_and_revision(tmp_path, bpe_model_dir, data_dir, mixed_rows):
    from cocoracle.atomic import sha256
    from cocoracle.model import save_checkpoint
    from cocoracle.oracle.train import train_oracle
    from conftest import make_tiny_model
    from synthetic import synthetic_cache

    params = tiny_params_dict()
    params["oracle"].update({"tasks": ["digit"], "source_layer": 1, "inject_layers": None})
    params["oracle"]["separate"].update(base="other-org/base", revision=SHA)
    params["oracle"]["separate"]["train"].update(max_steps=2)
    model, tokenizer = make_tiny_model(mixed_rows, dtype=torch.float32)
    checkpoint = tmp_path / "stage-1"
    save_checkpoint(model, tokenizer, checkpoint, {**params, "stage": 1})
    caches = {split: synthetic_cache(tmp_path / split, n, True, seed, d=32, layer="layer_1", noise=0.3).path
              for split, n, seed in [("train", 64, 0), ("val", 16, 1)]}
    base = tmp_path / "models" / "base" / "oracle"
    shutil.copytree(bpe_model_dir, base)
    out = tmp_path / "oracle"
    train_oracle("separate", params, 1, caches, checkpoint, base, data_dir, out, tmp_path / "live", CPU)
    record = read(out)
    assert record["base"] == {"name": "other-org/base", "revision": SHA, "directory": str(base),
                              "weights_sha256": {"model.safetensors": sha256(base / "model.safetensors")}}
    assert f"base model: other-org/base at revision {SHA}, loaded from {base}" in format_record(record)


def test_a_record_without_a_base_shows_none():
    assert "base model" not in format_record({"inputs": {}})
    shown = format_record({"base": {"name": "/data/gpt2", "revision": None, "directory": "/data/gpt2",
                                    "weights_sha256": {"model.safetensors": "ab" * 32}}})
    assert "base model: /data/gpt2 at a local directory (no revision)" in shown


# --- both engines, for real (e2e) --------------------------------------------------------------------

def _planned(dry_run: str) -> list[str]:
    """The jobs of a `snakemake -n` output: 'rule' or 'rule[wildcards]' (sorted by name), sorted."""
    jobs, rule = [], None
    for line in dry_run.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match:
            rule = match.group(1)
            jobs.append(rule)
        elif rule and line.strip().startswith("wildcards:"):
            jobs[-1] = f"{rule}[{', '.join(sorted(line.split(':', 1)[1].strip().split(', ')))}]"
    return sorted(jobs)


@pytest.mark.e2e
def test_both_engines_fetch_a_hub_model_first_on_the_head_node(tmp_path):
    """A hub id: the fetch comes before stage 0 in both DAGs. (That Snakemake runs it as a local rule a dry run
    does not show: test_the_fetch_rule_is_a_local_rule.)"""
    repo = repo_copy(tmp_path / "repo")
    set_param(repo, "model", "name", HUB_ID)
    set_param(repo, "model", "revision", SHA)
    run(["cocoracle", "dvc-yaml"], cwd=repo)
    dry = run(["snakemake", "-n", "--cores", "1", "models/seed-0/stage-0"], cwd=repo).stdout
    assert _planned(dry) == ["fetch_model[base=model]", "generate", "train_stage[seed=0, stage=0]"]
    stage0 = dry.split("rule train_stage:")[1].split("\n\n")[0]
    assert "models/base/model" in stage0.split("input:")[1].split("\n")[0]
    dag = run(["dvc", "dag", "--dot", "train_stage_0_seed_0"], cwd=repo).stdout
    assert re.search(r'"fetch_model_base" -> "train_stage_0_seed_0"', dag), dag


@pytest.mark.e2e
def test_replacing_a_local_bases_weights_reruns_its_dependents_and_nothing_else(tmp_path):
    """A local directory (byte-level BPE GPT-2) as model.name and as the separate oracle's base: both engines
    declare its files, and after a finished run, new weights rerun stage 0 and everything after it up to the
    separate oracle (which reads the base directly too), not the data."""
    from safetensors.torch import load_file, save_file

    repo = repo_copy(tmp_path / "repo")
    base = build_bpe_gpt2(repo / "pretrained" / "bpe-gpt2")
    weights = base / "model.safetensors"
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["name"] = params["oracle"]["separate"]["base"] = "pretrained/bpe-gpt2"
    # smaller still than the smoke run: an untrained BPE model decodes every validation and collection problem
    # to its token budget, which on a loaded two-core machine takes minutes at the smoke sizes
    params["data"].update(n_train=64, n_val=16, n_test=16, n_ood=8)
    params["train"].update(max_steps=3, val_examples=0)
    params["activations"]["max_problems"] = 32
    params["oracle"]["separate"]["train"].update(batch_size=8, max_steps=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["cocoracle", "dvc-yaml"], cwd=repo)
    target, stage = "models/seed-0/oracle/separate/stage-1", "train_separate_oracle_stage_1_seed_0"
    deps = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert "pretrained/bpe-gpt2/model.safetensors" in deps["train_stage_0_seed_0"]["deps"]
    assert "pretrained/bpe-gpt2/model.safetensors" in deps[stage]["deps"]
    dry = run(["snakemake", "-n", "--cores", "1", target], cwd=repo).stdout
    for rule in ("train_stage", "train_oracle"):
        assert "pretrained/bpe-gpt2/model.safetensors" in dry.split(f"rule {rule}:")[1].split("output:")[0]

    run(["snakemake", "--cores", "2", target], cwd=repo)
    run(["dvc", "commit", "-f", "--with-deps", stage], cwd=repo)  # DVC records the same finished run
    assert "Nothing to be done" in run(["snakemake", "-n", "--cores", "1", target], cwd=repo).stdout
    assert json.loads(run(["dvc", "status", "--json", "--with-deps", stage], cwd=repo).stdout or "{}") == {}
    provenance = run(["cocoracle", "provenance", "models/seed-0/stage-0"], cwd=repo).stdout
    assert "base model: pretrained/bpe-gpt2 at a local directory (no revision)" in provenance

    tensors = load_file(weights)
    tensors["transformer.wte.weight"] += 0.01
    save_file(tensors, weights, metadata={"format": "pt"})

    dependents = ["collect_activations[seed=0, split=train, stage=1]",
                  "collect_activations[seed=0, split=val, stage=1]",
                  "train_oracle[kind=separate, seed=0, stage=1]", "train_stage[seed=0, stage=0]",
                  "train_stage[seed=0, stage=1]"]
    assert _planned(run(["snakemake", "-n", "--cores", "1", target], cwd=repo).stdout) == dependents
    status = json.loads(run(["dvc", "status", "--json", "--with-deps", stage], cwd=repo).stdout)
    assert set(status) == {"train_stage_0_seed_0", stage}  # the two that read the weights; the rest follow them
    assert {"changed deps": {"pretrained/bpe-gpt2/model.safetensors": "modified"}} in status["train_stage_0_seed_0"]
    ran = re.findall(r"Running stage '(\w+)'", run(["dvc", "repro", stage], cwd=repo).stdout)
    assert sorted(ran) == sorted(["train_stage_0_seed_0", "train_stage_1_seed_0", "collect_stage_1_train_seed_0",
                                  "collect_stage_1_val_seed_0", stage])

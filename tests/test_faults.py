"""Faults detected before use: each is a one-line error naming the file and what is wrong, and nothing
downstream is written (docs/reliability.md lists them)."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError

import cocoracle.activations as activations
from cocoracle.atomic import atomic_dir, atomic_path, write_text
from cocoracle.cache_reader import ActivationCache
from cocoracle.cli import main
from cocoracle.config import InputError
from cocoracle.data import write_splits
from cocoracle.model import CHECKSUMS, initial_model, load_checkpoint, save_checkpoint
from conftest import tiny_params_dict

STAGE = 2
CPU = torch.device("cpu")
STALE = time.time() - 3600  # an mtime from before this process started


def _params() -> dict:
    params = tiny_params_dict()
    params["activations"] = {"layers": "all", "dtype": "float32", "shard_rows": 7, "batch_size": 4,
                             "max_problems": 12}
    return params


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """root/: params.yaml, data/, ckpt/ (stage 2, width 32), wide/ (width 64), cache-{train,val,test}/."""
    from cocoracle.data import load_split

    root = tmp_path_factory.mktemp("faults")
    params = _params()
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    write_splits(params["data"], root / "data")
    rows = load_split(root / "data", "train")
    for name, width in (("ckpt", 32), ("wide", 64)):
        model_params = {**params["model"], "tiny": {**params["model"]["tiny"], "n_embd": width}}
        model, tokenizer = initial_model(model_params, rows, 0)
        save_checkpoint(model, tokenizer, root / name, {**params, "model": model_params, "stage": STAGE})
    for split in ("train", "val", "test"):
        activations.collect_activations(params, STAGE, root / "ckpt", root / "data", split, root / f"cache-{split}",
                                        CPU)
    return root


@pytest.fixture
def cli(capsys):
    """Run the real CLI in-process: (exit status, stderr lines); the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(*args: str | Path) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err.splitlines()
    yield call
    root.handlers[:] = handlers
    root.setLevel(level)


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file itself), by relative name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def assert_one_line(lines: list[str], command: str, *parts: str) -> None:
    """stderr ends with one error line (after any progress bars), holding `parts`, and has no traceback."""
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == lines[-1:] and errors[0].startswith(f"cocoracle {command}: error: "), lines
    for part in parts:
        assert part in errors[0], (part, errors)


# ----------------------------------------------------------------------------------------------
# 1. collection killed mid-way; leftovers of killed atomic writes


class Killed(BaseException):
    """Stands for a signal that stops the process (not an Exception, like KeyboardInterrupt)."""


def _kill_after(monkeypatch, shards: int) -> None:
    write = activations.ShardWriter._write

    def dying(self, rows):
        if len(self.shards) == shards:
            raise Killed
        write(self, rows)
    monkeypatch.setattr(activations.ShardWriter, "_write", dying)


def _collect(built: Path, out: Path) -> None:
    activations.collect_activations(_params(), STAGE, built / "ckpt", built / "data", "test", out, CPU)


def test_killed_collection_leaves_no_cache_and_a_rerun_writes_one(built, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    _kill_after(monkeypatch, shards=2)
    with pytest.raises(Killed):
        _collect(built, out)
    assert not out.exists() and temporaries(tmp_path) == []
    with pytest.raises(InputError, match=f"{out}: no such cache directory"):
        ActivationCache(out)
    monkeypatch.undo()
    _collect(built, out)
    assert digest(out) == {k.replace("cache-test", "cache"): v for k, v in digest(built / "cache-test").items()}


def test_killed_collection_keeps_the_previous_cache(built, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    shutil.copytree(built / "cache-test", out)
    before = digest(out)
    _kill_after(monkeypatch, shards=1)
    with pytest.raises(Killed):
        _collect(built, out)
    assert digest(out) == before and temporaries(tmp_path) == []
    ActivationCache(out)


def test_a_stale_temporary_is_never_read_and_the_next_write_removes_it(built, tmp_path):
    """A complete-looking temporary left by a SIGKILL (killed between the manifest and the rename)."""
    out = tmp_path / "cache"
    stale = tmp_path / ".cache.k1lled_0.tmp"
    shutil.copytree(built / "cache-test", stale)
    os.utime(stale, (STALE, STALE))
    with pytest.raises(InputError, match=f"{out}: no such cache directory"):
        ActivationCache(out)
    with pytest.raises(InputError, match="temporary directory of an unfinished or killed write"):
        ActivationCache(stale)
    _collect(built, out)
    assert ActivationCache(out).manifest["rows"] and not stale.exists()


def test_stale_sweep_removes_only_its_own_old_temporaries(tmp_path):
    keep = [".out.keep.tmp", ".out.old.abcd1234.tmp", ".other.abcd1234.tmp", "out.abcd1234.tmp"]
    for name in [*keep, ".out.abcd1234.tmp", ".out.zz_99999.tmp"]:
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (STALE, STALE))
    (tmp_path / ".out.fresh123.tmp").mkdir()  # this process's (e.g. another write in progress)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "file").write_text("new")
    assert temporaries(tmp_path) == sorted([*keep, ".out.fresh123.tmp"])
    assert (tmp_path / "out" / "file").read_text() == "new"


# ----------------------------------------------------------------------------------------------
# 2. cache corruption


def _shard(cache: Path) -> Path:
    return cache / "shard-00001.safetensors"


CACHE_FAULTS = {
    "flipped-shard-byte": (lambda c: flip_byte(_shard(c), -5), "shard-00001.safetensors: checksum mismatch"),
    "deleted-shard": (lambda c: _shard(c).unlink(), "shard-00001.safetensors: missing"),
    "truncated-index": (lambda c: truncate(c / "index.parquet"), "index.parquet: checksum mismatch"),
    "truncated-manifest": (lambda c: truncate(c / "manifest.json"), "manifest.json: truncated or not JSON"),
    "missing-manifest": (lambda c: (c / "manifest.json").unlink(), "manifest.json: missing"),
    "manifest-without-shards": (lambda c: (c / "manifest.json").write_text('{"rows": 1}'),
                                "manifest.json: no 'shards' entry"),
}


@pytest.fixture(params=list(CACHE_FAULTS))
def corrupt_cache(request, built, tmp_path) -> tuple[Path, str]:
    """A corrupted copy of the test cache and the error it must give."""
    damage, message = CACHE_FAULTS[request.param]
    cache = tmp_path / "cache-test"
    shutil.copytree(built / "cache-test", cache)
    damage(cache)
    return cache, f"{cache}/{message}"


def test_corrupt_cache_is_named_when_opened(corrupt_cache):
    cache, message = corrupt_cache
    with pytest.raises(InputError) as info:
        ActivationCache(cache)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_probe_refuses_a_corrupt_cache(built, corrupt_cache, tmp_path, cli):
    cache, message = corrupt_cache
    outs = [tmp_path / name for name in ("probes.csv", "steps.csv", "heatmap.png", "steps.png", "probes.json")]
    code, err = cli("probe", "--params", built / "params.yaml", "--stage", STAGE, "--train", built / "cache-train",
                    "--val", built / "cache-val", "--held-out", cache, "--table", outs[0], "--steps-table", outs[1],
                    "--heatmap", outs[2], "--steps-heatmap", outs[3], "--metrics", outs[4])
    assert code == 2
    assert_one_line(err, "probe", message)
    assert not any(p.exists() for p in outs)


def test_oracle_commands_refuse_a_corrupt_cache(built, corrupt_cache, tmp_path, cli):
    cache, message = corrupt_cache
    code, err = cli("train-oracle", "--params", built / "params.yaml", "--stage", STAGE, "--device", "cpu",
                    "--data", built / "data", "--kind", "self", "--checkpoint", built / "ckpt", "--train", cache,
                    "--val", built / "cache-val", "--out", tmp_path / "oracle", "--live", tmp_path / "live")
    assert code == 2
    assert_one_line(err, "train-oracle", message)
    outs = [tmp_path / "oracle.csv", tmp_path / "oracle.json", tmp_path / "items.parquet"]
    code, err = cli("evaluate-oracle", "--params", built / "params.yaml", "--stage", STAGE, "--device", "cpu",
                    "--data", built / "data", "--checkpoint", built / "ckpt", "--separate", tmp_path / "sep",
                    "--self", tmp_path / "self", "--train", built / "cache-train", "--held-out", cache,
                    "--table", outs[0], "--metrics", outs[1], "--predictions", outs[2])
    assert code == 2
    assert_one_line(err, "evaluate-oracle", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache-test"]


# ----------------------------------------------------------------------------------------------
# 3. checkpoints


def _copy(built: Path, tmp_path: Path, name: str = "ckpt", legacy: bool = False) -> Path:
    """A copy of a checkpoint; `legacy`: without checksums.json, as written before it existed."""
    ckpt = tmp_path / name
    shutil.copytree(built / name, ckpt)
    if legacy:
        (ckpt / CHECKSUMS).unlink()
    return ckpt


def _load(ckpt: Path, **kwargs) -> None:
    load_checkpoint(ckpt, CPU, torch.float32, **kwargs)


def _tensor_byte(path: Path) -> int:
    """An offset inside the tensor data (past the JSON header) of a safetensors file."""
    header = int.from_bytes(path.read_bytes()[:8], "little")
    return 8 + header + (path.stat().st_size - 8 - header) // 2


CHECKPOINT_FAULTS = {
    "truncated-weights": (lambda c: truncate(c / "model.safetensors"), "model.safetensors: checksum mismatch"),
    "flipped-weights-byte": (lambda c: flip_byte(c / "model.safetensors", _tensor_byte(c / "model.safetensors")),
                             "model.safetensors: checksum mismatch"),
    "missing-params": (lambda c: (c / "params.json").unlink(), "params.json: missing"),
    "truncated-checksums": (lambda c: truncate(c / CHECKSUMS), f"{CHECKSUMS}: truncated or not JSON"),
}


@pytest.mark.parametrize("fault", list(CHECKPOINT_FAULTS))
def test_damaged_checkpoint_is_named(built, tmp_path, cli, fault):
    damage, message = CHECKPOINT_FAULTS[fault]
    ckpt = _copy(built, tmp_path)
    damage(ckpt)
    with pytest.raises(InputError) as info:
        _load(ckpt)
    assert str(info.value).startswith(f"{ckpt}/{message}") and "\n" not in str(info.value)
    metrics, predictions = tmp_path / "metrics.json", tmp_path / "predictions.parquet"
    code, err = cli("evaluate", "--params", built / "params.yaml", "--stage", STAGE, "--device", "cpu",
                    "--data", built / "data", "--checkpoint", ckpt, "--metrics", metrics, "--predictions", predictions)
    assert code == 2
    assert_one_line(err, "evaluate", f"{ckpt}/{message.split(':')[0]}: ")
    assert not metrics.exists() and not predictions.exists()


def test_checkpoint_without_checksums_still_loads_and_a_truncated_one_is_named(built, tmp_path):
    """Checkpoints written before checksums.json load unverified: a flipped tensor byte goes unnoticed
    (why checksums.json exists), a truncated file is still one line naming the checkpoint."""
    ckpt = _copy(built, tmp_path, legacy=True)
    flip_byte(ckpt / "model.safetensors", _tensor_byte(ckpt / "model.safetensors"))
    _load(ckpt)
    truncate(ckpt / "model.safetensors")
    with pytest.raises(InputError, match=f"{ckpt}: cannot load checkpoint") as info:
        _load(ckpt)
    assert "\n" not in str(info.value)


def test_tokenizer_of_another_checkpoint_is_named(built, tmp_path):
    from transformers import AutoTokenizer

    ckpt = _copy(built, tmp_path, legacy=True)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokenizer.add_tokens(["extra1", "extra2"])
    tokenizer.save_pretrained(ckpt)
    with pytest.raises(InputError, match=f"{ckpt}: the tokenizer has {len(tokenizer)} tokens, the weights "
                                         f"{len(tokenizer) - 2} embedding rows"):
        _load(ckpt)


def test_params_json_of_another_width_is_named(built, tmp_path):
    ckpt = _copy(built, tmp_path, legacy=True)
    params = json.loads((ckpt / "params.json").read_text())
    params["model"]["tiny"]["n_embd"] = 64
    (ckpt / "params.json").write_text(json.dumps(params))
    with pytest.raises(InputError, match=f"{ckpt}/params.json: model.tiny.n_embd is 64, the weights have 32"):
        _load(ckpt)


def test_checkpoint_of_another_width_where_this_run_expects_its_own(built):
    expect = _params()["model"]
    with pytest.raises(InputError, match=f"{built / 'wide'}: a checkpoint with model.tiny.n_embd 64, this run's "
                                         "params say 32"):
        _load(built / "wide", expect=expect)
    _load(built / "ckpt", expect=expect)


def test_train_refuses_an_init_of_another_width(built, tmp_path, cli):
    out = tmp_path / "stage-1"
    code, err = cli("train", "--params", built / "params.yaml", "--stage", 1, "--device", "cpu", "--data",
                    built / "data", "--init", built / "wide", "--out", out, "--live", tmp_path / "live")
    assert code == 2
    assert_one_line(err, "train", "model.tiny.n_embd", "32", "64")
    assert not out.exists() and not out.with_name("stage-1.resume").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_separate_oracle_refuses_a_base_of_another_width(built, tmp_path, cli):
    out = tmp_path / "oracle"
    code, err = cli("train-oracle", "--params", built / "params.yaml", "--stage", STAGE, "--device", "cpu",
                    "--data", built / "data", "--kind", "separate", "--base", built / "wide", "--checkpoint",
                    built / "ckpt", "--train", built / "cache-train", "--val", built / "cache-val", "--out", out,
                    "--live", tmp_path / "live")
    assert code == 2
    assert_one_line(err, "train-oracle", f"{built / 'wide'} has width 64, activations have 32")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# 4. a full disk


DISK_FULL = {
    "oserror": OSError(errno.ENOSPC, "No space left on device"),
    "safetensors": SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) at "
                                   'path "/x/.tmpAbCdEf"'),
}


def _full_disk(monkeypatch, owner, name: str, error: BaseException) -> None:
    """`owner.name` writes half its file, then fails as a full disk would."""
    def write(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise error
    monkeypatch.setattr(owner, name, write)


@pytest.mark.parametrize("error", list(DISK_FULL))
def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(built, tmp_path, monkeypatch, error):
    import transformers.modeling_utils

    out = _copy(built, tmp_path)
    before = digest(out)
    model, tokenizer = load_checkpoint(out, CPU, torch.float32)
    _full_disk(monkeypatch, transformers.modeling_utils, "safe_save_file", DISK_FULL[error])
    with pytest.raises(InputError) as info:
        save_checkpoint(model, tokenizer, out, json.loads((out / "params.json").read_text()))
    assert str(info.value).startswith(f"{out}: no space left on device") and "\n" not in str(info.value)
    assert digest(out) == before and temporaries(tmp_path) == []


def test_full_disk_while_collecting_keeps_the_previous_cache(built, tmp_path, monkeypatch, cli):
    out = tmp_path / "cache"
    shutil.copytree(built / "cache-test", out)
    before = digest(out)
    _full_disk(monkeypatch, activations, "save_file", DISK_FULL["oserror"])
    code, err = cli("collect", "--params", built / "params.yaml", "--stage", STAGE, "--device", "cpu",
                    "--data", built / "data", "--split", "test", "--checkpoint", built / "ckpt", "--out", out)
    assert code == 2
    assert_one_line(err, "collect", f"{out}: no space left on device")
    assert digest(out) == before and temporaries(tmp_path) == []


def test_full_disk_while_writing_a_file_keeps_the_previous_one(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "first")
    with pytest.raises(InputError, match=f"{target}: no space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "first" and temporaries(tmp_path) == []


def test_full_disk_before_the_temporary_exists_is_named(tmp_path, monkeypatch):
    import tempfile

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(InputError, match=f"{tmp_path / 'out'}: no space left on device"):
        with atomic_dir(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_dir(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []

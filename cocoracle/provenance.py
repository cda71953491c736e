"""What made an output: the code's git revision (and whether the tree had uncommitted changes), the package and
library versions, the training seed of its run, the number of threads torch computed with and the CPU kind (the
same params give the same bits on the same number of threads and the same kind of CPU, not across them:
docs/reliability.md), a hash of the params the step read and the hashes of its inputs; for an output trained from
a pretrained base, which model and revision that was and its weights' hashes.
Checkpoints and oracle directories keep it in provenance.json, caches in their manifest, results files under a
`provenance` key (the headline file beside one, cocoracle/headline.py, has its results file's); `cocoracle
provenance PATH` prints it. Nothing in it depends on the time or the directory, so two runs of the same commit and
params on the same number of threads write the same bytes."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from cocoracle.atomic import sha256
from cocoracle.config import SPLITS, InputError
from cocoracle.headline import results_for
from cocoracle.shapes import check

FILE = "provenance.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # a base model's weights files, hashed one by one in its record
LIBRARIES = ("cocoracle", "torch", "transformers", "peft", "safetensors", "scikit-learn")
# the CPU features that select the kernels torch and the BLAS libraries compute with (/proc/cpuinfo's names)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


def _git(*args: str) -> str | None:
    """git in the workspace the step runs in (the engines run every step from the repository root)."""
    return _command("git", *args)


def _command(*args: str) -> str | None:
    """A command's output, stripped; None where it cannot run or fails."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def input_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (their relative names and contents), in sorted order; hidden
    files (an engine's markers such as Snakemake's .snakemake_timestamp) are not the input's content."""
    path = Path(path)
    if path.is_file():
        return sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256(file)}\n".encode())
    return digest.hexdigest()


def cpu_kind() -> dict[str, Any]:
    """The CPU the step computed on: its model name, machine, the instruction sets among ISA_FLAGS it has, and
    the vector code path torch picked (the same params on another kind of CPU may give other bits)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "CPU part") and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    elif platform.system() == "Darwin":
        model = _command("sysctl", "-n", "machdep.cpu.brand_string") or model
    return {"model": model, "machine": platform.machine(), "isa": [flag for flag in ISA_FLAGS if flag in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def base_record(name: str, revision: str | None, directory: str | Path) -> dict[str, Any]:
    """The pretrained base an output started from: its params name (a hub id or directory), the hub revision
    (None for a local directory) and the sha256 of each weights file in `directory`, where it was loaded from."""
    directory = Path(directory)
    weights = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return {"name": name, "revision": revision, "directory": str(directory),
            "weights_sha256": {p.relative_to(directory).as_posix(): sha256(p) for p in weights}}


def describe(params: dict[str, Any], inputs: Iterable[str | Path], base: dict[str, Any] | None = None,
             seed: int | None = None) -> dict[str, Any]:
    """The provenance record of an output made from `params` (the sections its step read) and `inputs`, in the
    run of training seed `seed`, and from the pretrained `base` (a base_record) where it started from one."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    record = {
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "versions": {name: _version(name) for name in LIBRARIES},
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_kind(),
        "params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
        "inputs": {str(path): input_hash(path) for path in inputs},
    }
    if base is not None:
        record["base"] = base
    return record


def read(path: str | Path) -> dict[str, Any]:
    """The provenance record of a checkpoint or oracle directory, a cache, a results file or its headline or
    predictions file; for any other path, a one-line InputError saying what it is and where its record is."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir():
        candidates = [(path / FILE, None), (path / "manifest.json", "provenance")]
    else:
        candidates = [(path, "provenance")] if path.suffix == ".json" else []
        if (results := results_for(path) or _predictions_results(path)) is not None:  # its results file's record
            candidates.append((results, "provenance"))
    for file, key in candidates:
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError):
                raise InputError(f"{file}: not JSON") from None
            record = data.get(key) if key and isinstance(data, dict) else data
            if isinstance(record, dict) and (key is None or record):
                return check(record, "provenance_record", f"{file}{f' ({key})' if key else ''}")
    raise InputError(f"{path}: {_without_record(path)}")


PREDICTIONS = "-predictions.parquet"


def _predictions_results(path: Path) -> Path | None:
    """The results file a predictions parquet was written beside (stage-K-predictions.parquet -> stage-K.json)."""
    return path.with_name(path.name[:-len(PREDICTIONS)] + ".json") if path.name.endswith(PREDICTIONS) else None


def _without_record(path: Path) -> str:
    """What a path with no provenance record is, and where the record of what made it is."""
    ask = "ask `cocoracle provenance` about the results files it was made from (results/seed-S/eval/stage-K.json, ...)"
    if path.is_dir():
        return ("no provenance record: not a checkpoint, oracle or cache directory (they hold provenance.json or "
                "manifest.json)")
    if path.suffix == ".parquet" and path.stem in SPLITS:
        return ("a data split written by `cocoracle generate` from the params' data section alone; data has no "
                "provenance record (the steps that read it record its sha256 among their inputs)")
    if path.name.endswith(PREDICTIONS):
        return f"predictions whose results file ({_predictions_results(path).name}) is missing or holds no record"
    if path.suffix in (".md", ".html"):
        return f"a report page, made by `cocoracle report` or `seed-report`; it has no provenance record: {ask}"
    if path.suffix in (".png", ".csv", ".tsv"):
        return (f"a plot or table, made beside the results files or by `cocoracle report`; it has no provenance "
                f"record: {ask}")
    if path.suffix == ".json":
        return ("no provenance record (written by a checkpoint, cache or metrics step of this version; a headline "
                "file's is in the results file beside it)")
    return "no provenance record: not a checkpoint, oracle, cache or results file"


def format_record(record: dict[str, Any]) -> str:
    """Readable lines: revision, versions, seed, threads, CPU, params hash, one line per input."""
    dirty = " (uncommitted changes)" if record.get("git_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items() if v)
    cpu = record.get("cpu") or {}
    isa = " ".join(cpu.get("isa", [])) or "none listed"
    lines = [f"git revision: {record.get('git_revision')}{dirty}", f"versions: {versions}",
             f"training seed: {record.get('seed')}", f"torch threads: {record.get('torch_threads')}",
             f"cpu: {cpu.get('model')} ({cpu.get('machine')}; torch {cpu.get('torch_capability')}; {isa})",
             f"params sha256: {record.get('params_sha256')}", "inputs:"]
    lines += [f"  {name}  {digest}" for name, digest in record.get("inputs", {}).items()]
    base = record.get("base")
    if base:
        revision = f"revision {base['revision']}" if base.get("revision") else "a local directory (no revision)"
        lines += [f"base model: {base['name']} at {revision}, loaded from {base['directory']}"]
        lines += [f"  {name}  {digest}" for name, digest in base.get("weights_sha256", {}).items()]
    return "\n".join(lines)

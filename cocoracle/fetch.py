"""`cocoracle fetch-model`: a Hugging Face model at its pinned commit, into the models folder, before training.

The pipeline's only network step. Stage 0 (and the separate oracle, when its base is a hub id) then load the
fetched directory, a declared input of theirs, and never call the Hub: under SLURM this step is a local rule,
so compute nodes need no internet. Only what loading needs is fetched: the config, the safetensors weights and
the tokenizer files. The download goes to a temporary directory beside the output and is renamed into place
when complete (cocoracle/atomic.py), so a failed or interrupted fetch leaves no half model to load.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from cocoracle.atomic import atomic_dir
from cocoracle.config import InputError

# the files a causal LM and its tokenizer load from (GPT-2's BPE files and the other tokenizers' formats)
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model"]
SOURCE = "source.json"  # in a fetched directory: the hub id and commit it holds
# which params keys name each base the pipeline may fetch (the fetch step's `--which`)
BASES = {"model": ("model.name", "model.revision"), "oracle": ("oracle.separate.base", "oracle.separate.revision")}

log = logging.getLogger(__name__)


def hub_model(params: dict[str, Any], which: str) -> tuple[str, str, str, str]:
    """(hub id, revision, and their params keys) of the base `which` names: 'model' or 'oracle'."""
    name_key, revision_key = BASES[which]
    section = params["model"] if which == "model" else params["oracle"]["separate"]
    name, revision = section[name_key.rpartition(".")[2]], section.get("revision")
    if revision is None:
        raise InputError(f"{revision_key}: required to fetch {name_key} '{name}' (a 40-character commit sha)")
    return name, revision, name_key, revision_key


def fetch_model(name: str, revision: str, out: str | Path, name_key: str = "model.name",
                revision_key: str = "model.revision") -> None:
    """Download `name` at `revision` (config, safetensors weights, tokenizer) into `out`, atomically."""
    from huggingface_hub import snapshot_download

    with atomic_dir(out) as tmp:
        log.info("fetching %s at %s into %s", name, revision, out)
        try:
            snapshot_download(repo_id=name, revision=revision, local_dir=tmp, allow_patterns=ALLOW_PATTERNS)
        except Exception as exc:  # noqa: BLE001 - network, authentication, unknown repo or revision: one line
            reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise InputError(f"{name_key}: cannot fetch '{name}' at {revision_key} {revision} ({reason})") from None
        # huggingface_hub's download bookkeeping (times, etags) is not the model: the directory's bytes are
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
        if not (tmp / "config.json").is_file() or not any(tmp.glob("*.safetensors")):
            raise InputError(f"{name_key}: '{name}' at {revision_key} {revision} has no config.json or no "
                             "safetensors weights (only safetensors are fetched)")
        (tmp / SOURCE).write_text(json.dumps({"name": name, "revision": revision}, indent=2) + "\n")
    log.info("fetched %s", ", ".join(sorted(p.name for p in Path(out).iterdir())))


def fetch_base(params: dict[str, Any], which: str, out: str | Path) -> None:
    """The pipeline step: fetch the base `which` ('model' or 'oracle') names in params into `out`."""
    name, revision, name_key, revision_key = hub_model(params, which)
    fetch_model(name, revision, out, name_key, revision_key)

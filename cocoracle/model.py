"""Tokenizer and model loading: the tiny from-scratch GPT-2, or any Hugging Face causal LM."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from cocoracle.atomic import atomic_dir, is_temporary, sha256
from cocoracle.config import InputError
from cocoracle.numerics import deterministic_algorithms
from cocoracle.provenance import FILE as PROVENANCE_FILE

BOT, EOT = "<bot>", "<eot>"
# "<thought>" is never used but stays: without it every token id of the tiny tokenizer (and any model's
# vocabulary size) would change, and existing checkpoints would no longer match their tokenizer.
MARKERS = [BOT, EOT, "<thought>"]
TINY_SPECIALS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
CHECKSUMS = "checksums.json"  # in a checkpoint directory: the sha256 of every other file in it
TINY_SHAPE = ("n_embd", "n_layer", "n_head", "n_positions")  # model.tiny keys that fix the weights' shapes
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
FUSED_GELU = "gelu_pytorch_tanh"  # GPT-2's tanh-approximated GELU (gelu_new) as one kernel: 1.2x a CPU training step

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when present (or asked for), else cpu; torch switched to its deterministic algorithms."""
    deterministic_algorithms()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: CUDA is not available on this machine")
    return torch.device(requested)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The params' dtype; bfloat16 falls back to float32 where the GPU lacks it."""
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32
    return dtype


def build_tiny_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the corpus, one token per digit, plus the special tokens."""
    tok = Tokenizer(models.WordLevel(unk_token=TINY_SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    specials = list(TINY_SPECIALS.values()) + MARKERS
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=MARKERS, **TINY_SPECIALS)


def corpus_texts(rows: list[dict[str, Any]]) -> Iterable[str]:
    """Every text the model sees, for building the tiny tokenizer's vocabulary."""
    yield "| ###"
    for row in rows:
        yield row["question"]
        yield from row["steps"]
        yield str(row["answer"])


def _tiny_model(tiny: dict[str, int], tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=tiny["n_positions"], n_embd=tiny["n_embd"],
                        n_layer=tiny["n_layer"], n_head=tiny["n_head"], resid_pdrop=tiny["dropout"],
                        embd_pdrop=tiny["dropout"], attn_pdrop=tiny["dropout"], bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        activation_function=FUSED_GELU)
    return GPT2LMHeadModel(config)


def pretrained(name: str | Path, revision: str | None = None, key: str = "model.name"
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Hugging Face causal LM and its tokenizer with our tokens added: from a directory (offline, as the
    pipeline's steps load a fetched or local model), else from the Hub at `revision`."""
    local = Path(name).is_dir()
    where = {"local_files_only": True} if local else {"revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **where)
        model = AutoModelForCausalLM.from_pretrained(name, **where)
    except (OSError, ValueError) as exc:
        raise InputError(f"{key}: cannot load '{name}' ({str(exc).splitlines()[0]})") from None
    tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    if tokenizer.eos_token is None:
        raise InputError(f"{key}: '{name}' has no end-of-sequence token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def initial_model(model_params: dict[str, Any], train_rows: list[dict[str, Any]], seed: int,
                  base: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The stage-0 starting point: tiny GPT-2 from scratch, or a pretrained model with our tokens, loaded from
    `base` (the directory the pipeline fetched model.name into, or model.name's own local directory) when given,
    else from model.name (at model.revision when a hub id). `seed` draws the tiny model's weights (and any new
    token rows)."""
    torch.manual_seed(seed)
    if model_params["name"] == "tiny":
        tokenizer = build_tiny_tokenizer(corpus_texts(train_rows))
        return _tiny_model(model_params["tiny"], tokenizer), tokenizer
    if base is not None and not Path(base).is_dir():
        raise InputError(f"{base}: no such model directory (--base: the fetched or local model.name)")
    return pretrained(base if base is not None else model_params["name"], model_params.get("revision"))


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                    params: dict[str, Any], provenance: dict[str, Any] | None = None) -> None:
    """safetensors weights, config, tokenizer, the params used, what made it (provenance.json) and
    checksums.json, written atomically.

    Refuses (before writing) a model whose shape disagrees with params' model section, e.g. one trained
    from an --init checkpoint of another width.
    """
    mismatch = _shape_mismatch(model.config, params.get("model", {}))
    if mismatch:
        raise InputError(f"{out_dir}: not written: {mismatch} (was --init a checkpoint of another model?)")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True))
        if provenance is not None:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        write_checksums(tmp)


def write_checksums(directory: Path) -> None:
    """checksums.json: the sha256 of every other file in `directory`."""
    sums = {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")


def verify_checksums(directory: Path) -> None:
    """Check every file listed in checksums.json; a directory without one (written before it) passes unverified."""
    file = directory / CHECKSUMS
    if not file.is_file():
        log.debug("%s: no %s (an older checkpoint or an oracle directory): files not verified", directory, CHECKSUMS)
        return
    try:
        sums = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        sums = None
    if not isinstance(sums, dict):
        raise InputError(f"{file}: truncated or not JSON (rewrite the checkpoint)")
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise InputError(f"{path}: missing (listed in {CHECKSUMS})")
        if sha256(path) != expected:
            raise InputError(f"{path}: checksum mismatch (truncated, corrupt or modified)")


def checkpoint_params(path: str | Path) -> dict[str, Any]:
    """The params a checkpoint was trained with (its params.json)."""
    file = Path(path) / "params.json"
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: missing or unreadable ({exc.__class__.__name__})") from None


def load_checkpoint(path: str | Path, device: torch.device, dtype: torch.dtype, expect: dict[str, Any] | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A checkpoint written by save_checkpoint; one-line error naming a missing, corrupt or mismatched one.

    Checks checksums.json, that the tokenizer fits the embeddings, that the weights have the shape its
    params.json says and, with `expect` (a run's params model section), the shape that run expects.
    """
    path = Path(path)
    if is_temporary(path) or not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise InputError(f"{path}: not a checkpoint (config.json or model.safetensors missing)")
    verify_checksums(path)
    if expect is not None:
        _check_expected(path, expect)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise InputError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from None
    _check_vocabulary(path, model, tokenizer)
    mismatch = _shape_mismatch(model.config, _own_model_params(path))
    if mismatch:
        raise InputError(f"{path / 'params.json'}: {mismatch} (params.json and weights of different models)")
    return model.to(device), tokenizer


def _own_model_params(path: Path) -> dict[str, Any]:
    """The model section of the checkpoint's params.json; empty without one (a Hugging Face directory)."""
    return checkpoint_params(path).get("model", {}) if (path / "params.json").is_file() else {}


def _check_expected(path: Path, expect: dict[str, Any]) -> None:
    """The checkpoint was trained as the model `expect` describes (name and, for tiny, the shape)."""
    trained = _own_model_params(path)
    if trained.get("name") != expect["name"]:
        raise InputError(f"{path}: a checkpoint of model.name {trained.get('name')!r}, this run's params say "
                         f"{expect['name']!r}")
    if expect["name"] == "tiny":
        for key in TINY_SHAPE:
            if trained["tiny"][key] != expect["tiny"][key]:
                raise InputError(f"{path}: a checkpoint with model.tiny.{key} {trained['tiny'][key]}, this run's "
                                 f"params say {expect['tiny'][key]}")


def _shape_mismatch(config: Any, model_params: dict[str, Any]) -> str | None:
    """How `config` differs from the tiny architecture in `model_params`; None if it agrees or is not tiny."""
    if model_params.get("name") != "tiny":
        return None
    for key in TINY_SHAPE:
        if getattr(config, key) != model_params["tiny"][key]:
            return f"model.tiny.{key} is {model_params['tiny'][key]}, the weights have {getattr(config, key)}"
    return None


def _check_vocabulary(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every token id has an embedding row."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise InputError(f"{path}: the tokenizer has {len(tokenizer)} tokens, the weights {rows} embedding rows "
                         "(tokenizer and model.safetensors of different checkpoints)")


def load_base(name: str | Path, device: torch.device, dtype: torch.dtype, revision: str | None = None
              ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A checkpoint of ours (a directory with params.json) or any Hugging Face directory, or id at `revision`,
    with our tokens."""
    if (Path(name) / "params.json").is_file():
        return load_checkpoint(name, device, dtype)
    model, tokenizer = pretrained(str(name), revision, key="oracle.separate.base")
    return model.to(device=device, dtype=dtype), tokenizer

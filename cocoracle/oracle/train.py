"""Activation oracles: a separate oracle (peft LoRA on a base model) and a self-oracle (the Coconut checkpoint
fine-tuned, full or LoRA, rehearsing its own task): building, training, saving, loading, and answering prompts."""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm import tqdm
from transformers import AddedToken, AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from cocoracle.activations import resolve_layers
from cocoracle.atomic import atomic_dir
from cocoracle.cache_reader import ActivationCache
from cocoracle.coconut import IGNORE, Codec, append_greedy, coconut_forward, layout_options, loss_fn
from cocoracle.codedeps import code_files
from cocoracle.config import ORACLE_KINDS, InputError, run_seed
from cocoracle.data import load_split
from cocoracle.loop import (
    Throughput,
    adamw_with_schedule,
    epoch_order,
    live_logger,
    optimizer_step,
    validation_steps,
)
from cocoracle.model import (
    checkpoint_params,
    load_base,
    load_checkpoint,
    pick_dtype,
    verify_checksums,
    write_checksums,
)
from cocoracle.oracle.data import OracleBatch, OracleCodec, build_items, item_vectors
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.metrics import score
from cocoracle.oracle.questions import ACT, vocabulary_texts
from cocoracle.precision import autocast, precision_of
from cocoracle.provenance import FILE as PROVENANCE_FILE
from cocoracle.provenance import base_record, describe
from cocoracle.resume import Saver, fingerprint

log = logging.getLogger(__name__)
SPEC_FILE = "oracle.json"
VALIDATION_FILE = "validation.json"  # the validation curve and the step whose weights were kept
VAL_ITEMS = 500  # validation items scored (exact match) at each quarter of training


@dataclass
class OracleSpec:
    """What an oracle directory is: which activations it reads and how they are injected."""
    kind: str
    stage: int
    source_layer: int         # hidden-state index the activations were read from (0 = embeddings)
    inject_layers: list[int]  # hidden-state indices they are added at
    alpha: float
    finetune: str             # "lora" (adapter over `base`) or "full"
    base: str                 # base model (LoRA; a local one relative to the oracle) or the checkpoint fine-tuned


def oracle_layers(oracle: dict[str, Any], n_layer: int) -> tuple[int, list[int]]:
    """The source layer of a model n_layer deep and the injection layers (default: the one before the source)."""
    source = resolve_layers([oracle["source_layer"]], n_layer)[0]
    inject = oracle["inject_layers"] if oracle["inject_layers"] is not None else [max(source - 1, 0)]
    return source, list(inject)


def oracle_loss(model: PreTrainedModel, injector: Injector, batch: OracleBatch, vectors: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on target tokens with the activations injected at the placeholders."""
    injector.arm(vectors, batch.act_mask)
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits
    finally:
        injector.disarm()
    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE)


@torch.no_grad()
def decode(model: PreTrainedModel, injector: Injector, batch: OracleBatch, vectors: torch.Tensor | None,
           eos: int, max_new_tokens: int) -> list[list[int]]:
    """Greedy, cached decoding; `vectors` are injected on the prompt pass only (None: no injection)."""
    if vectors is not None:
        injector.arm(vectors, batch.act_mask)
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, use_cache=True)
    finally:
        injector.disarm()
    mask, positions, cache = batch.attention_mask, batch.position_ids[:, -1:], out.cache
    B = mask.shape[0]
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    max_new_tokens = min(max_new_tokens, limit - int(positions.max()) - 1)
    finished = torch.zeros(B, dtype=torch.bool, device=mask.device)
    generated: list[list[int]] = [[] for _ in range(B)]
    token = out.logits[:, -1].argmax(-1)
    for _ in range(max_new_tokens):
        if append_greedy(token, finished, generated, eos):
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        positions = positions + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        cache, token = out.cache, out.logits[:, -1].argmax(-1)
    return generated


def answer_prompts(model: PreTrainedModel, injector: Injector, codec: OracleCodec, prompts: list[str],
                   vectors: torch.Tensor | None, max_new_tokens: int, batch_size: int) -> list[str]:
    """The oracle's answers to `prompts` about `vectors` (one per prompt), in batches."""
    device = next(model.parameters()).device
    model.eval()
    answers = []
    for start in range(0, len(prompts), batch_size):
        batch = codec.batch(prompts[start:start + batch_size]).to(device)
        part = None if vectors is None else vectors[start:start + batch_size].to(device)
        decoded = decode(model, injector, batch, part, codec.eos, max_new_tokens)
        answers += [codec.tokenizer.decode(ids) for ids in decoded]
    return answers


def _cannot_spell(tokenizer: PreTrainedTokenizerBase, word: str) -> bool:
    unk = tokenizer.unk_token_id
    return unk is not None and unk in tokenizer(word, add_special_tokens=False)["input_ids"]


def add_oracle_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Add the placeholder, and every question word the tokenizer cannot spell, as tokens; their ids.

    New embedding rows are drawn from the old rows' mean and spread with a fixed seed, so that loading an
    adapter over a freshly extended base model gives the very rows it was trained with.
    """
    words = sorted({w for text in vocabulary_texts() for w in text.split() if w != ACT and _cannot_spell(tokenizer, w)})
    tokenizer.add_tokens([ACT], special_tokens=True)
    tokenizer.add_tokens([AddedToken(w, single_word=True) for w in words])
    new_ids = tokenizer.convert_tokens_to_ids([ACT, *words])
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return new_ids
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(0)
    embeddings = (model.get_input_embeddings(), model.get_output_embeddings())
    layers = {id(m.weight): m.weight for m in embeddings if m is not None}
    with torch.no_grad():
        for weight in layers.values():
            rows = weight[:old].float()
            noise = torch.randn(weight.shape[0] - old, weight.shape[1], generator=generator)
            fresh = rows.mean(0) + rows.std(0) * noise
            weight[old:] = fresh.to(weight.dtype)
    return new_ids


def with_lora(model: PreTrainedModel, lora: dict[str, Any], token_ids: list[int]) -> PreTrainedModel:
    """A LoRA adapter that also trains the embedding rows of `token_ids` (and, tied, their output rows)."""
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], trainable_token_indices=token_ids,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_oracle(kind: str, params: dict[str, Any], stage: int, checkpoint: str | Path, base: str | Path | None,
                 d_model: int, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, OracleSpec]:
    """The model to train: LoRA over `base` (separate), or the checkpoint itself, full or LoRA (self).

    A LoRA oracle also trains the embedding rows of the tokens added for it; a full fine-tune trains every row.
    """
    oracle, trained = params["oracle"], checkpoint_params(checkpoint)
    dtype = pick_dtype(trained["model"]["dtype"], device)
    settings = oracle[kind]
    if kind == "separate":
        if base is None:
            raise InputError("--base: the separate oracle needs a base model (oracle.separate.base)")
        model, tokenizer = load_base(base, device, dtype, settings.get("revision"))  # a directory in the pipeline
        finetune, base_name = "lora", str(base)
    else:
        model, tokenizer = load_checkpoint(checkpoint, device, dtype)
        finetune, base_name = settings["finetune"], str(checkpoint)
    new_ids = add_oracle_tokens(model, tokenizer)
    if model.config.hidden_size != d_model:
        raise InputError(f"oracle.{kind}: {base_name} has width {model.config.hidden_size}, activations have {d_model}")
    # the activations are the Coconut checkpoint's, so a fraction of depth is of its depth, whatever the base's
    source, inject = oracle_layers(oracle, AutoConfig.from_pretrained(checkpoint).num_hidden_layers)
    if finetune == "lora":
        model = with_lora(model, settings["lora"], new_ids)
    spec = OracleSpec(kind, stage, source, inject, settings["alpha"], finetune, base_name)
    return model, tokenizer, spec


def _sort_target_modules(adapter_config: Path) -> None:
    """peft writes target_modules from a set (order varies per process); sort it so equal runs give equal bytes."""
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text())
        config["target_modules"] = sorted(config["target_modules"])
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))


def save_oracle(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: OracleSpec,
                checkpoint: str | Path, out_dir: str | Path, validation: dict[str, Any],
                provenance: dict[str, Any] | None = None) -> None:
    """Adapter (LoRA) or full safetensors weights, tokenizer, the spec, the validation record and the
    checkpoint's params; atomic. A local base is recorded relative to out_dir, so the oracle loads from any
    working directory."""
    if Path(spec.base).is_dir():
        spec = replace(spec, base=os.path.relpath(Path(spec.base).resolve(), Path(out_dir).resolve()))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        _sort_target_modules(tmp / "adapter_config.json")
        tokenizer.save_pretrained(tmp)
        (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2))
        (tmp / VALIDATION_FILE).write_text(json.dumps(validation, indent=2))
        (tmp / "params.json").write_text(json.dumps(checkpoint_params(checkpoint), indent=2, sort_keys=True))
        if provenance is not None:
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        write_checksums(tmp)


def load_oracle(path: str | Path, device: torch.device
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, OracleSpec]:
    """An oracle written by save_oracle, in eval mode."""
    verify_checksums(Path(path))
    spec = read_spec(path)
    dtype = pick_dtype(checkpoint_params(path)["model"]["dtype"], device)
    if spec.finetune == "full":
        model, tokenizer = load_checkpoint(path, device, dtype)
    else:
        local = Path(path) / spec.base
        model, tokenizer = load_base(local if local.is_dir() else spec.base, device, dtype)  # else a hub id
        add_oracle_tokens(model, tokenizer)  # the rows the adapter started from; it holds the trained ones
        model = PeftModel.from_pretrained(model, str(path)).to(device)
    return model.eval(), tokenizer, spec


def read_spec(path: str | Path) -> OracleSpec:
    """The spec save_oracle wrote: which activations the oracle reads and how they are injected."""
    file = Path(path) / SPEC_FILE
    try:
        return OracleSpec(**json.loads(file.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{file}: missing or unreadable ({exc.__class__.__name__})") from None


def read_validation(path: str | Path) -> dict[str, Any]:
    """The validation record save_oracle wrote: selected_step, selected_val_exact_match, steps, curve."""
    file = Path(path) / VALIDATION_FILE
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: missing or unreadable ({exc.__class__.__name__})") from None


class BestOnVal:
    """The trainable weights (on the CPU) at the best validation exact match so far; a tie keeps the earlier."""

    def __init__(self) -> None:
        self.step, self.exact_match = 0, -math.inf
        self.curve: dict[str, float] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def offer(self, model: PreTrainedModel, step: int, exact_match: float) -> None:
        self.curve[str(step)] = exact_match
        if exact_match > self.exact_match:
            self.step, self.exact_match = step, exact_match
            self.weights = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model: PreTrainedModel) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.weights:
                    param.copy_(self.weights[name])

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """What a resume state keeps of it: the scalars (JSON) and the weights."""
        return {"step": self.step, "exact_match": self.exact_match, "curve": self.curve}, self.weights

    def load(self, scalars: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.step, self.exact_match, self.curve = scalars["step"], scalars["exact_match"], scalars["curve"]
        self.weights = weights

    def record(self, steps: int) -> dict[str, Any]:
        return {"selected_step": self.step, "selected_val_exact_match": self.exact_match, "steps": steps,
                "curve": self.curve}


def validation_exact_match(model: PreTrainedModel, injector: Injector, codec: OracleCodec, val: pd.DataFrame,
                           vectors: torch.Tensor, oracle: dict[str, Any]) -> float:
    """Mean exact match of the oracle's answers on the validation items."""
    answers = answer_prompts(model, injector, codec, val["prompt"].tolist(), vectors, oracle["max_new_tokens"],
                             oracle["batch_size"])
    return float(np.mean([score(a, t)["exact_match"] for a, t in zip(answers, val["target"], strict=True)]))


def oracle_optimizer_steps(hp: dict[str, Any], n_items: int, mix: float) -> int:
    """Enough steps for `epochs` passes over the oracle items when a fraction `mix` of steps rehearses."""
    if hp.get("max_steps"):
        return int(hp["max_steps"])
    return max(1, math.ceil(hp["epochs"] * n_items / hp["batch_size"] / (1 - mix)))


def rehearsal(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data_dir: str | Path, checkpoint: str | Path,
              batch_size: int, rng: np.random.Generator) -> Callable[[], torch.Tensor]:
    """A Coconut-objective loss on fresh train problems at the checkpoint's own stage (text CoT at stage 0)."""
    trained = checkpoint_params(checkpoint)
    coconut, stage = trained["coconut"], trained["stage"]
    rows, codec = load_split(data_dir, "train"), Codec(tokenizer)
    device = next(model.parameters()).device

    def loss() -> torch.Tensor:
        chunk = [rows[i] for i in rng.integers(0, len(rows), batch_size)]
        batch = codec.batch(chunk, stage, coconut["num_stages"], coconut["thoughts_per_step"],
                            **layout_options(coconut)).to(device)
        return loss_fn(coconut_forward(model, batch), batch)
    return loss


def train_oracle(kind: str, params: dict[str, Any], stage: int, caches: dict[str, str | Path], checkpoint: str | Path,
                 base: str | Path | None, data_dir: str | Path, out_dir: str | Path, live_dir: str | Path,
                 device: torch.device) -> None:
    """Train one oracle on a stage's train cache, validating exact match on its val cache at each quarter;
    save the weights of the best validation point (ties: the earlier) to out_dir."""
    if kind not in ORACLE_KINDS:
        raise InputError(f"--kind {kind}: one of {', '.join(ORACLE_KINDS)}")
    oracle = params["oracle"]
    settings, hp = oracle[kind], oracle[kind]["train"]
    train_cache, val_cache = ActivationCache(caches["train"]), ActivationCache(caches["val"])
    seed = run_seed(params)
    torch.manual_seed(seed * 1000 + stage)
    d_model = train_cache.manifest["d_model"]
    model, tokenizer, spec = build_oracle(kind, params, stage, checkpoint, base, d_model, device)
    codec, injector = OracleCodec(tokenizer), Injector(model, spec.inject_layers, spec.alpha)
    rng = np.random.default_rng([seed, stage, ORACLE_KINDS.index(kind)])
    items = build_items(train_cache, oracle["tasks"], spec.source_layer, rng)
    vectors = item_vectors(train_cache, items, spec.source_layer)
    val = build_items(val_cache, oracle["tasks"], spec.source_layer, rng)
    if val.empty:
        raise InputError(f"{caches['val']}: no thought stands for a step, nothing to validate on")
    val = val.iloc[rng.permutation(len(val))[:VAL_ITEMS]]
    val_vectors = item_vectors(val_cache, val, spec.source_layer)
    mix = settings.get("mix", 0.0)
    rehearse = rehearsal(model, tokenizer, data_dir, checkpoint, hp["batch_size"], rng) if mix else None

    steps = oracle_optimizer_steps(hp, len(items), mix)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_with_schedule(trainable, hp, steps)
    order = epoch_order(len(items), steps * hp["batch_size"], rng)
    eval_at, best = validation_steps(steps), BestOnVal()
    cursor, precision = 0, precision_of(checkpoint_params(checkpoint)["model"])
    inputs = [caches["train"], caches["val"], checkpoint, *([base] if base and Path(base).exists() else []),
              *([Path(data_dir) / "train.parquet"] if mix else [])]
    saver = Saver(out_dir, live_dir, fingerprint({**params, "kind": kind, "stage": stage}, inputs,
                                                 code_files("train-oracle")), params.get("resume", {}))
    start = saver.restore(model, optimizer, scheduler)
    if start:
        rng.bit_generator.state, cursor = saver.extra["rng"], saver.extra["cursor"]
        best.load(saver.extra["best"], saver.extra_tensors)

    def loop_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        scalars, weights = best.state()
        return {"rng": rng.bit_generator.state, "cursor": cursor, "best": scalars}, weights

    headline = ("oracle_train", f"stage-{stage}", kind)
    with saver.watching_signals(), live_logger(live_dir, start, headline=headline) as live:
        model.train()
        speed = Throughput()
        for step in tqdm(range(start, steps), desc=f"{kind} oracle stage {stage}", mininterval=2, initial=start,
                         total=steps):
            speed.add(hp["batch_size"])
            with autocast(precision, device):
                if rehearse is not None and rng.random() < mix:
                    loss, name = rehearse(), "train/rehearsal_loss"
                else:
                    pick = order[cursor:cursor + hp["batch_size"]]
                    cursor += len(pick)
                    batch = codec.batch(items["prompt"].iloc[pick].tolist(), items["target"].iloc[pick].tolist())
                    loss, name = oracle_loss(model, injector, batch.to(device), vectors[pick].to(device)), "train/loss"
            loss.backward()
            optimizer_step(optimizer, scheduler, trainable, hp["grad_clip"])
            live.log_metric(name, loss.item())
            if step + 1 in eval_at:
                rate = speed.per_second()
                with autocast(precision, device):
                    exact = validation_exact_match(model, injector, codec, val, val_vectors, oracle)
                best.offer(model, step + 1, exact)
                live.log_metric("val/exact_match", exact)
                log.info("%s oracle stage %d step %d/%d loss %.4f val exact match %.3f (%.0f examples/s)", kind,
                         stage, step + 1, steps, loss.item(), exact, rate)
                model.train()
                speed.restart()
            live.next_step()
            if step + 1 < steps:
                if saver.due(step + 1):
                    saver.save(step + 1, model, optimizer, scheduler, *loop_state())
                saver.stop_if_asked(step + 1, model, optimizer, scheduler, loop_state)
    injector.remove()
    best.restore(model)
    log.info("%s oracle stage %d: keeping the weights of step %d/%d (best val exact match %.3f)", kind, stage,
             best.step, steps, best.exact_match)
    origin = None
    if kind == "separate" and base is not None and Path(base).is_dir():
        origin = base_record(settings["base"], settings.get("revision"), base)
    save_oracle(model, tokenizer, spec, checkpoint, out_dir, best.record(steps),
                describe({"oracle": oracle, "kind": kind, "stage": stage}, inputs, base=origin, seed=seed))
    saver.clear()

"""Curriculum training of one Coconut stage: AdamW, warmup + decay, clipping, accumulation, dvclive."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import PreTrainedModel

from cocoracle.coconut import (
    NO_TOKEN_LIMIT,
    CoconutBatch,
    Codec,
    coconut_forward,
    layout_options,
    loss_fn,
    question_positions,
    reserve_question_positions,
    scored_tokens,
)
from cocoracle.codedeps import code_files
from cocoracle.config import SPLITS, InputError, run_seed, stage_optimizer_steps
from cocoracle.data import load_split
from cocoracle.distributed import DataParallel, data_parallel
from cocoracle.evaluate import predict
from cocoracle.loop import (
    Throughput,
    adamw_with_schedule,
    epoch_order,
    live_logger,
    optimizer_step,
    validation_steps,
)
from cocoracle.model import initial_model, load_checkpoint, pick_dtype, save_checkpoint
from cocoracle.precision import autocast, maybe_compile
from cocoracle.provenance import base_record, describe
from cocoracle.resume import Saver, fingerprint

log = logging.getLogger(__name__)


def batch_stages(stage: int, n_batches: int, mix_prob: float, rng: np.random.Generator) -> list[int]:
    """The stage each micro-batch is laid out for: `stage`, or with mix_prob a uniformly drawn earlier one."""
    mixed = rng.random(n_batches) < mix_prob
    earlier = rng.integers(0, max(stage, 1), n_batches)
    return [int(e) if m and stage > 0 else stage for m, e in zip(mixed, earlier, strict=True)]


def micro_batches(n_rows: int, batch_size: int, n_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices of n_batches micro-batches, walking through fresh permutations (epochs)."""
    order = epoch_order(n_rows, n_batches * batch_size, rng)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


def _check_fits(model, codec: Codec, rows: list[dict[str, Any]], coconut: dict[str, Any]) -> None:
    """Fail early when a question (of any split) is longer than the positions the model reserves for questions,
    or the longest problem would not fit the position table."""
    reserved = question_positions(model)
    if reserved is None:  # positions continue after the question: the longest question and steps together
        longest = max(rows, key=lambda r: len(codec.encode(r["question"] + " " + " | ".join(r["steps"]))))
    else:  # the reserved positions, then the longest rest
        widest = max(len(codec.encode(r["question"])) for r in rows)
        if widest > reserved:
            raise InputError(f"a question of {widest} tokens, but the model reserves {reserved} positions for "
                             "questions (a checkpoint trained on other data: train again from stage 0)")
        longest = max(rows, key=lambda r: len(codec.encode(" | ".join(r["steps"]))))
    batch = codec.batch([longest], 0, coconut["num_stages"], coconut["thoughts_per_step"], **layout_options(coconut))
    thoughts = coconut["num_stages"] * coconut["thoughts_per_step"]
    question = int(batch.question_length[0])
    rest = batch.prefix_ids.shape[1] - question + thoughts + batch.suffix_ids.shape[1]
    length = (question if reserved is None else reserved) + rest
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise InputError(f"model.tiny.n_positions: {limit} positions, but the longest problem needs {length}")


class CoconutObjective(torch.nn.Module):
    """The Coconut loss as one module call, so that DistributedDataParallel sees one forward per backward."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, batch: CoconutBatch, normalizer: float | None = None) -> torch.Tensor:
        return loss_fn(coconut_forward(self.model, batch), batch, normalizer)


def train_stage(params: dict[str, Any], stage: int, data_dir: str | Path, init: str | Path | None,
                out_dir: str | Path, live_dir: str | Path, device: torch.device, base: str | Path | None = None
                ) -> None:
    """Train stage `stage` from `init` (stage 0: a fresh model, or model.name's weights from the directory
    `base`, the fetched or local model) and save the checkpoint to out_dir.

    Under torchrun every process takes an equal share of each global batch (`train.batch_size`) and
    DDP averages the gradients; the loss is normalised by the global batch's tokens, so the updates
    match one process's. Rank 0 validates, logs and saves; every process saves its own RNG states in the
    shared resume state (see `cocoracle.resume`), which only the same number of processes continues.
    """
    train, coconut = params["train"], params["coconut"]
    if not 0 <= stage <= coconut["num_stages"]:
        raise InputError(f"--stage {stage}: must be within 0..coconut.num_stages ({coconut['num_stages']})")
    if stage > 0 and init is None:
        raise InputError(f"--init: stage {stage} starts from the previous stage's checkpoint")
    if base is not None and (stage > 0 or params["model"]["name"] == "tiny"):
        raise InputError("--base: only stage 0 of a pretrained model.name starts from a base directory")
    with data_parallel(device) as dp:
        if train["batch_size"] % dp.world:
            raise InputError(f"train.batch_size: {train['batch_size']} is not divisible by the {dp.world} "
                             "training processes")
        _train(params, stage, data_dir, init, out_dir, live_dir, dp, base)


def _train(params: dict[str, Any], stage: int, data_dir: str | Path, init: str | Path | None,
           out_dir: str | Path, live_dir: str | Path, dp: DataParallel, base: str | Path | None) -> None:
    train, coconut, device = params["train"], params["coconut"], dp.device
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    rows, val_rows = splits["train"], splits["val"][: train["val_examples"]]
    dtype = pick_dtype(params["model"]["dtype"], device)
    if stage == 0:
        model, tokenizer = initial_model(params["model"], rows, run_seed(params), base)
        model = model.to(device=device, dtype=dtype)
    else:
        model, tokenizer = load_checkpoint(init, device, dtype, expect=params["model"])
    codec = Codec(tokenizer)
    every_row = [r for split_rows in splits.values() for r in split_rows]
    if stage == 0:  # the later stages keep the reservation of the checkpoint they start from
        reserve_question_positions(model, codec, every_row)
    _check_fits(model, codec, every_row, coconut)

    seed = run_seed(params)
    torch.manual_seed(seed * 1000 + stage + 7919 * dp.rank)  # own dropout masks per process
    rng = np.random.default_rng([seed, stage])  # the same batches in every process
    steps = stage_optimizer_steps(train, stage, len(rows))
    n_micro = steps * train["grad_accum"]
    batches = micro_batches(len(rows), train["batch_size"], n_micro, rng)
    layouts = batch_stages(stage, n_micro, train["mix_prob"], rng)
    optimizer, scheduler = adamw_with_schedule(model.parameters(), train, steps, train["schedule"])
    eval_at = validation_steps(steps)
    objective: torch.nn.Module = CoconutObjective(maybe_compile(model, train["compile"]))
    if dp.world > 1:
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None,
                                            broadcast_buffers=False)
    precision = params["model"]["precision"]

    inputs = ([Path(data_dir) / f"{split}.parquet" for split in SPLITS] + ([Path(init)] if init else [])
              + ([Path(base)] if base else []))
    saver = Saver(out_dir, live_dir, fingerprint({**params, "stage": stage}, inputs, code_files("train")),
                  params.get("resume", {}), dp)
    start = saver.restore(model, optimizer, scheduler)

    with contextlib.ExitStack() as stack:
        stack.enter_context(saver.watching_signals())
        live = (stack.enter_context(live_logger(live_dir, start, headline=("train", f"stage-{stage}")))
                if dp.main else None)
        model.train()
        progress = tqdm(range(start, steps), desc=f"stage {stage}", mininterval=2, disable=not dp.main,
                        initial=start, total=steps)
        speed = Throughput()
        for step in progress:
            speed.add(train["batch_size"] * train["grad_accum"])
            total = torch.zeros((), device=device)
            for k in range(train["grad_accum"]):
                i = step * train["grad_accum"] + k
                batch = codec.batch([rows[j] for j in batches[i][dp.rank::dp.world]], layouts[i],
                                    coconut["num_stages"], coconut["thoughts_per_step"],
                                    **layout_options(coconut)).to(device)
                normalizer = None
                if dp.world > 1:  # this share's summed loss over the global batch's tokens, times world (DDP averages)
                    tokens = dp.sum(torch.tensor(float(scored_tokens(batch)), device=device))
                    normalizer = float(tokens) / dp.world
                last = k == train["grad_accum"] - 1
                with (objective.no_sync() if dp.world > 1 and not last else contextlib.nullcontext()):
                    with autocast(precision, device):
                        loss = objective(batch, normalizer) / train["grad_accum"]
                    loss.backward()
                total += loss.detach()
            optimizer_step(optimizer, scheduler, model.parameters(), train["grad_clip"])
            global_loss = float(dp.sum(total)) / dp.world
            if live is not None:
                progress.set_postfix(loss=f"{global_loss:.4f}")
                live.log_metric("train/loss", global_loss)
                live.log_metric("train/lr", scheduler.get_last_lr()[0])
                if val_rows and step + 1 in eval_at:
                    rate = speed.per_second()
                    with autocast(precision, device):
                        results = predict(model, codec, val_rows, stage, coconut, train["batch_size"],
                                          NO_TOKEN_LIMIT, desc="val")
                    accuracy = sum(r["correct"] for r in results) / len(results)
                    live.log_metric("val/accuracy", accuracy)
                    log.info("stage %d step %d/%d loss %.4f val accuracy %.3f (%.0f examples/s)", stage, step + 1,
                             steps, global_loss, accuracy, rate)
                    model.train()
                    speed.restart()
                live.next_step()
            if step + 1 < steps:  # every process, at the same steps
                if saver.due(step + 1):
                    saver.save(step + 1, model, optimizer, scheduler)
                saver.stop_if_asked(step + 1, model, optimizer, scheduler)
    if dp.main:
        read = {key: params[key] for key in ("model", "coconut", "train")}
        origin = base_record(params["model"]["name"], params["model"].get("revision"), base) if base else None
        save_checkpoint(model, tokenizer, out_dir, {**params, "stage": stage},
                        describe({**read, "stage": stage}, inputs, base=origin, seed=seed))
    saver.clear()

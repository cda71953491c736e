"""Where a self-oracle training step's CPU time goes, and what dropping dropout or bf16 would buy, side by side.

On the params' model (untrained, with the oracle's tokens added) at oracle.self.train.batch_size, with items
like the training's (each task's first template, targets of the first column of train problems, random vectors):
  - one oracle step's parts: tokenizing the batch, forward, backward, the optimizer step; a rehearsal step (the
    Coconut objective at the all-latent stage, as oracle.self.mix draws it); the examples/s these give at the
    params' mix;
  - forward + backward as configured, without dropout and under bf16 autocast as `model.precision: bf16-mixed`
    runs it (both science settings, not changed here: the ratio says what choosing one on val could save),
    and on one thread instead of the process's (what running two single-thread jobs side by side costs each),
    interleaved in one loop so that machine load hits all alike.
Usage: python scripts/bench_oracle_step.py [--params params.yaml] [--repeats 20]
"""
from __future__ import annotations

import argparse
import copy

import torch
from bench_training import in_bf16, interleaved
from figures import figure
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cocoracle.coconut import Codec, coconut_forward, layout_options, loss_fn
from cocoracle.config import load_params, run_seed
from cocoracle.data import column_additions, make_splits, problems_table
from cocoracle.loop import adamw_with_schedule, optimizer_step
from cocoracle.model import initial_model
from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.questions import TEMPLATES, prompt, target
from cocoracle.oracle.train import add_oracle_tokens, oracle_layers, oracle_loss


def items(rows: list[dict], tasks: list[str], size: int, source: int) -> tuple[list[str], list[str]]:
    """`size` prompts and targets about the first column of train problems, tasks in turn."""
    prompts, targets = [], []
    for i, row in enumerate(rows[:size]):
        task = tasks[i % len(tasks)]
        fields = {**row, **column_additions(row["a"], row["b"])[0], "step_text": row["steps"][0]}
        prompts.append(prompt(source, TEMPLATES[task][0]))
        targets.append(target(task, fields))
    return prompts, targets


def oracle_model(params: dict) -> tuple[list[dict], PreTrainedModel, PreTrainedTokenizerBase]:
    """The params' train problems and their untrained model with the oracle's tokens added, in train mode."""
    rows = problems_table(make_splits(params["data"])["train"], 0).to_pylist()
    model, tokenizer = initial_model(params["model"], rows, run_seed(params))
    add_oracle_tokens(model, tokenizer)
    return rows, model.train(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = load_params(args.params)
    oracle, coconut = params["oracle"], params["coconut"]
    hp, mix = oracle["self"]["train"], oracle["self"]["mix"]
    rows, model, tokenizer = oracle_model(params)
    source, inject = oracle_layers(oracle, model.config.num_hidden_layers)
    injector = Injector(model, inject, oracle["self"]["alpha"])
    codec, size = OracleCodec(tokenizer), hp["batch_size"]
    prompts, targets = items(rows, oracle["tasks"], size, source)
    vectors = torch.randn(size, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    batch = codec.batch(prompts, targets)
    stage = coconut["num_stages"]
    rehearsal = Codec(tokenizer).batch(rows[size:2 * size], stage, stage, coconut["thoughts_per_step"],
                                       **layout_options(coconut))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_with_schedule(trainable, hp, 10 ** 6)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    state: dict[str, torch.Tensor] = {}
    threads = torch.get_num_threads()
    print(f"model={params['model']['name']} batch={size} tokens={tuple(batch.input_ids.shape)} "
          f"threads={threads} repeats={args.repeats} mix={mix}")
    parts = {"tokenize": lambda: codec.batch(prompts, targets),
             "forward": lambda: state.update(loss=oracle_loss(model, injector, batch, vectors)),
             "backward": lambda: state.pop("loss").backward(),
             "optimizer": lambda: optimizer_step(optimizer, scheduler, trainable, hp["grad_clip"]),
             "rehearsal step": lambda: loss_fn(coconut_forward(model, rehearsal), rehearsal).backward()}
    t = interleaved(parts, dict.fromkeys(parts, threads), args.repeats)
    oracle_step = t["tokenize"] + t["forward"] + t["backward"] + t["optimizer"]
    mean_step = (1 - mix) * oracle_step + mix * (t["rehearsal step"] + t["optimizer"])
    print("ms per part: " + ", ".join(f"{name} {s * 1000:.1f}" for name, s in t.items()))
    print(f"oracle step {oracle_step * 1000:.1f} ms; mean step at mix {mix}: {mean_step * 1000:.1f} ms, "
          f"{size / mean_step:.0f} examples/s")
    figure("self-oracle training, examples/s", size / mean_step)

    no_dropout = copy.deepcopy(model)
    for module in no_dropout.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    no_dropout.config.attn_pdrop = 0.0
    quiet = Injector(no_dropout, inject, oracle["self"]["alpha"])
    variants = {"as configured": lambda: oracle_loss(model, injector, batch, vectors).backward(),
                "no dropout": lambda: oracle_loss(no_dropout, quiet, batch, vectors).backward()}
    variants["bf16 autocast"] = in_bf16(variants["as configured"])
    variants["1 thread"] = variants["as configured"]
    v = interleaved(variants, dict.fromkeys(variants, threads) | {"1 thread": 1}, args.repeats)
    torch.set_num_threads(threads)
    base = v["as configured"]
    print("ms per forward + backward, interleaved; ratio = variant / as configured (> 1: slower): "
          + ", ".join(f"{name} {s * 1000:.1f} ({s / base:.2f}x)" for name, s in v.items()))
    if threads > 1:
        figure(f"self-oracle step on 1 thread / on {threads}", v["1 thread"] / base, "x")


if __name__ == "__main__":
    main()

"""What building a batch costs beside the step it feeds: ids remembered across epochs against the tokenizer every time.

Training and the self-oracle tokenize the same problems and questions every epoch. Per curriculum stage, on the
params' model (untrained) and batch size, interleaved so that machine load hits all alike:
  - ms per Coconut batch with the tokenizer called for every text (what every batch paid before the codecs
    remembered ids, and what a first epoch still pays) and with the ids remembered (every later epoch);
  - ms per forward + backward of such a batch, and the batch's share of batch + step either way;
and the same for an oracle batch (each task's first template, targets of train problems) at the self-oracle's
batch size. Both ways give equal tensors (checked here).
Usage: python scripts/bench_batching.py [--params params.yaml] [--repeats 20]
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from bench_oracle_step import items, oracle_model
from bench_training import interleaved
from figures import figure

from cocoracle.coconut import Codec, coconut_forward, layout_options, loss_fn
from cocoracle.config import load_params
from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.train import oracle_layers, oracle_loss


def fresh_each_time(codec: Codec | OracleCodec) -> Codec | OracleCodec:
    """The codec, but calling its tokenizer for every text."""
    codec.encode = lambda text: codec.tokenizer(text, add_special_tokens=False)["input_ids"]
    return codec


def same(a, b) -> bool:
    """Two batches hold equal fields."""
    pairs = zip(vars(a).values(), vars(b).values(), strict=True)
    return all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in pairs)


def compared(build: Callable[[Codec | OracleCodec], Any], kept: Codec | OracleCodec,
             fresh: Codec | OracleCodec, loss: Callable[[Any], torch.Tensor], repeats: int) -> dict[str, float]:
    """Seconds per batch built either way and per forward + backward of it, interleaved."""
    batch = build(kept)
    assert same(batch, build(fresh))
    steps = {"tokenizer each time": lambda: build(fresh), "ids remembered": lambda: build(kept),
             "forward + backward": lambda: loss(batch).backward()}
    return interleaved(steps, dict.fromkeys(steps, torch.get_num_threads()), repeats)


def gain(t: dict[str, float]) -> float:
    """How much faster batch + step is with remembered ids."""
    return (t["tokenizer each time"] + t["forward + backward"]) / (t["ids remembered"] + t["forward + backward"])


def row(name: str, t: dict[str, float]) -> str:
    fresh, kept, step = t["tokenizer each time"], t["ids remembered"], t["forward + backward"]
    return (f"{name:<14}{fresh * 1000:>14.1f}{kept * 1000:>14.1f}{fresh / kept:>9.1f}x{step * 1000:>12.1f}"
            f"{fresh / (fresh + step):>13.1%}{kept / (kept + step):>13.1%}{gain(t):>10.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = load_params(args.params)
    coconut, size = params["coconut"], params["train"]["batch_size"]
    rows, model, tokenizer = oracle_model(params)
    threads = torch.get_num_threads()
    layout = (coconut["num_stages"], coconut["thoughts_per_step"])
    picks = [rows[i] for i in np.random.default_rng(0).integers(0, len(rows), size)]
    print(f"model={params['model']['name']} batch={size} threads={threads} repeats={args.repeats}")
    print(f"{'batch':<14}{'tokenizer ms':>14}{'remembered ms':>14}{'ratio':>10}{'fwd+bwd ms':>12}"
          f"{'share before':>13}{'share now':>13}{'step gain':>11}")
    for stage in range(coconut["num_stages"] + 1):
        t = compared(lambda codec, stage=stage: codec.batch(picks, stage, *layout, **layout_options(coconut)),
                     Codec(tokenizer), fresh_each_time(Codec(tokenizer)),
                     lambda batch: loss_fn(coconut_forward(model, batch), batch), args.repeats)
        print(row(f"stage {stage}", t), flush=True)
        figure(f"remembered ids: training step gain, stage {stage}", gain(t), "x")
    oracle = params["oracle"]
    source, inject = oracle_layers(oracle, model.config.num_hidden_layers)
    prompts, targets = items(rows, oracle["tasks"], oracle["self"]["train"]["batch_size"], source)
    injector = Injector(model, inject, oracle["self"]["alpha"])
    vectors = torch.randn(len(prompts), model.config.hidden_size)
    t = compared(lambda codec: codec.batch(prompts, targets), OracleCodec(tokenizer),
                 fresh_each_time(OracleCodec(tokenizer)), lambda batch: oracle_loss(model, injector, batch, vectors),
                 args.repeats)
    print(row("oracle items", t))
    figure("remembered ids: self-oracle step gain", gain(t), "x")


if __name__ == "__main__":
    main()

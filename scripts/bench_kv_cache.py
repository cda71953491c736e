"""Training throughput of the all-latent stage: cached latent passes vs a naive full recompute.

Same model, same batch, forward + backward; prints examples/s for each and the ratio.
Usage: python scripts/bench_kv_cache.py [--params params.yaml] [--batches 20]
"""
from __future__ import annotations

import argparse
import time

import torch
from figures import figure

from cocoracle.coconut import Codec, coconut_forward, loss_fn, naive_forward
from cocoracle.config import load_params, run_seed
from cocoracle.data import make_splits, problems_table
from cocoracle.model import initial_model


def throughput(forward, model, batch, n: int) -> float:
    """Examples per second of forward + backward over n repeats (after one warm-up)."""
    for i in range(n + 1):
        if i == 1:
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss_fn(forward(model, batch), batch).backward()
    return n * batch.prefix_ids.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    params = load_params(args.params)
    rows = problems_table(make_splits(params["data"])["train"], 0).to_pylist()
    model, tokenizer = initial_model(params["model"], rows, run_seed(params))
    model.train()
    coconut, size = params["coconut"], params["train"]["batch_size"]
    stage = coconut["num_stages"]
    batch = Codec(tokenizer).batch(rows[:size], stage, stage, coconut["thoughts_per_step"])
    cached = throughput(coconut_forward, model, batch, args.batches)
    naive = throughput(naive_forward, model, batch, args.batches)
    print(f"model={params['model']['name']} stage={stage} thoughts={batch.n_thoughts} batch={size} "
          f"threads={torch.get_num_threads()}")
    print(f"cached: {cached:.1f} examples/s")
    print(f"naive:  {naive:.1f} examples/s")
    print(f"ratio cached/naive: {cached / naive:.2f}x")
    figure(f"KV-cached vs naive recompute, stage {stage}", cached / naive, "x", at_least=2)


if __name__ == "__main__":
    main()

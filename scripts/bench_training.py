"""Coconut training throughput on the CPU: batched cached latent passes vs a naive recompute vs a batch-of-1 loop.

Everything runs side by side in one process on the same model and the same problems, and prints one table:
  - every curriculum stage 0..num_stages at train.batch_size;
  - the all-latent stage with 3, 6 and 12 thoughts (the batch Codec.batch makes, with n_thoughts replaced: at that
    stage the layout is the one of thoughts_per_step = T / num_stages);
  - the all-latent stage at batch sizes 8, 32 and 128 with the params' thought count.
A measurement is forward + backward (loss_fn(...).backward()): no optimizer step (AdamW's cost does not depend on
the path). Batches are built before timing; the three paths take turns within every repeat, so a change in the
machine's load hits them alike. cached: coconut_forward on the whole batch; naive: naive_forward on it;
batch-of-1: the same problems one at a time through coconut_forward, each its own forward + backward.
MFU (cached path) = 6 x non-embedding parameters x tokens/s, over the best fp32 rate of square torch.matmul measured
here (the best of several rounds: a few calls alone understate it);
tokens of an example = its non-padding prefix and suffix tokens plus its thoughts (attention FLOPs not counted).
Usage: python scripts/bench_training.py [--params params.yaml] [--repeats 10] [--quick]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from figures import figure

from cocoracle.coconut import CoconutBatch, Codec, coconut_forward, layout_options, loss_fn, naive_forward
from cocoracle.config import load_params, run_seed
from cocoracle.data import make_splits, problems_table
from cocoracle.model import initial_model
from cocoracle.precision import autocast

THOUGHTS, BATCH_SIZES = (3, 6, 12), (8, 32, 128)
CPU = torch.device("cpu")
COLUMNS = (f"{'setting':<10}{'B':>5}{'T':>4}{'tok/ex':>8}{'cached':>9}{'naive':>9}{'batch-1':>9}{'c/b1':>8}"
           f"{'c/naive':>8}{'GFLOP/s':>9}{'MFU':>7}")


def timed(step, repeats: int) -> float:
    """Seconds per call of step() over `repeats` calls, after one warm-up."""
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def interleaved(steps: dict[str, Callable[[], None]], threads: dict[str, int], repeats: int) -> dict[str, float]:
    """Seconds per step of each variant, the variants taking turns within every repeat."""
    total = dict.fromkeys(steps, 0.0)
    for name, step in steps.items():
        torch.set_num_threads(threads[name])
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            torch.set_num_threads(threads[name])
            start = time.perf_counter()
            step()
            total[name] += time.perf_counter() - start
    return {name: t / repeats for name, t in total.items()}


def matmul_gflops(n: int = 1024, rounds: int = 5, calls: int = 20, device: torch.device = CPU,
                  dtype: torch.dtype = torch.float32) -> float:
    """The device's matmul rate in `dtype`: 2n^3 / t for a square n x n torch.matmul, the best of `rounds`."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def product() -> None:
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return max(2 * n**3 / timed(product, calls) for _ in range(rounds)) / 1e9


def in_bf16(step: Callable[[], None]) -> Callable[[], None]:
    """`step` under the bf16 autocast of `model.precision: bf16-mixed`."""
    def run() -> None:
        with autocast("bf16-mixed", torch.device("cpu")):
            step()
    return run


def train_step(model, forward, batches: list[CoconutBatch]):
    """One forward + backward per batch (gradients accumulate across them, zeroed once)."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        for batch in batches:
            loss_fn(forward(model, batch), batch).backward()
    return step


def tokens(batch: CoconutBatch) -> int:
    """Tokens the model processes for the batch: non-padding prefix and suffix tokens plus every row's thoughts."""
    return int(batch.prefix_mask.sum() + batch.suffix_mask.sum()) + batch.n_thoughts * batch.prefix_ids.shape[0]


def measure(model, batch: CoconutBatch, singles: list[CoconutBatch], repeats: int) -> dict[str, float]:
    """Examples/s of the three paths on one batch (singles: its rows as batches of 1), and model GFLOP/s cached."""
    n = batch.prefix_ids.shape[0]
    steps = {"cached": train_step(model, coconut_forward, [batch]), "naive": train_step(model, naive_forward, [batch]),
             "single": train_step(model, coconut_forward, singles)}
    rates = {name: n / seconds
             for name, seconds in interleaved(steps, dict.fromkeys(steps, torch.get_num_threads()), repeats).items()}
    flops = 6 * model.num_parameters(exclude_embeddings=True) * tokens(batch) / n * rates["cached"]
    return {**rates, "gflops": flops / 1e9}


def row(name: str, batch: CoconutBatch, r: dict[str, float], peak: float) -> str:
    """One table line."""
    n = batch.prefix_ids.shape[0]
    return (f"{name:<10}{n:>5}{batch.n_thoughts:>4}{tokens(batch) / n:>8.1f}{r['cached']:>9.1f}{r['naive']:>9.1f}"
            f"{r['single']:>9.1f}{r['cached'] / r['single']:>7.2f}x{r['cached'] / r['naive']:>7.2f}x"
            f"{r['gflops']:>9.2f}{r['gflops'] / peak:>7.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 repeats, thoughts 3 and 6, batch sizes 8 and 32")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    thoughts, sizes = (THOUGHTS[:2], BATCH_SIZES[:2]) if args.quick else (THOUGHTS, BATCH_SIZES)
    params = load_params(args.params)
    coconut, size = params["coconut"], params["train"]["batch_size"]
    rows = problems_table(make_splits(params["data"])["train"], 0).to_pylist()
    model, tokenizer = initial_model(params["model"], rows, run_seed(params))
    model.train()
    codec, last = Codec(tokenizer), coconut["num_stages"]

    def batches(n: int, stage: int) -> tuple[CoconutBatch, list[CoconutBatch]]:
        """The first n problems at `stage`, as one batch and as batches of 1."""
        layout, options = (stage, last, coconut["thoughts_per_step"]), layout_options(coconut)
        return codec.batch(rows[:n], *layout, **options), [codec.batch([r], *layout, **options) for r in rows[:n]]

    peak = matmul_gflops()
    print(f"model={params['model']['name']} non-embedding params={model.num_parameters(exclude_embeddings=True):,} "
          f"(all {model.num_parameters():,}) threads={torch.get_num_threads()} repeats={repeats}")
    print(f"fp32 matmul 1024x1024: {peak:.1f} GFLOP/s; examples/s of forward + backward, GFLOP/s and MFU of cached")
    print(COLUMNS)
    for stage in range(last + 1):
        batch, singles = batches(size, stage)
        r = measure(model, batch, singles, repeats)
        print(row(f"stage {stage}", batch, r, peak), flush=True)
        figure(f"MFU of training, stage {stage}", r["gflops"] / peak, "%", at_least=0.5)
    figure("batched KV-cached vs batch-of-1, all-latent stage", r["cached"] / r["single"], "x", at_least=10)
    figure("batched KV-cached vs naive recompute, all-latent stage", r["cached"] / r["naive"], "x", at_least=2)
    batch, singles = batches(size, last)
    for t in thoughts:
        grown, grown_singles = replace(batch, n_thoughts=t), [replace(s, n_thoughts=t) for s in singles]
        print(row(f"T={t}", grown, measure(model, grown, grown_singles, repeats), peak), flush=True)
    for n in sizes:
        batch, singles = batches(n, last)
        print(row(f"B={n}", batch, measure(model, batch, singles, repeats), peak), flush=True)


if __name__ == "__main__":
    main()

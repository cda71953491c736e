"""Stage-0 training throughput of a params file on this machine's accelerator: tokens/s, MFU and peak memory.

Issue 13's GPU check, prepared to run in one short call: the params' first curriculum stage (default
params/gpt2-large.yaml) for a few hundred optimizer steps with its own precision (bf16-mixed) and compile
setting, as `cocoracle train` runs them (the Coconut objective under autocast, AdamW with the schedule, gradient
clipping). Printed: the compile/warm-up time, ms per step, tokens/s and examples/s, model TFLOP/s, MFU against
this device's best square-matmul rate in the run's dtype measured in the same process, and peak memory.

--random builds the params' architecture with random weights (throughput does not depend on the weights), for
machines that cannot download them: GPT-2 sizes by name (with GPT-2's vocabulary size, so the LM head costs what
it does), or the config of a local directory. Runs on a CPU too (its test does; figures there are not the
point). MFU = 6 x non-embedding parameters x tokens/s (attention's FLOPs not counted) over the matmul rate;
tokens = the batch's non-padding tokens (stage 0 has no thoughts).
Usage: python scripts/bench_gpu.py [--params params/gpt2-large.yaml] [--steps 300] [--warmup 20] [--random]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cocoracle.coconut import Codec, layout_options
from cocoracle.config import load_params, run_seed
from cocoracle.data import make_splits, problems_table
from cocoracle.loop import adamw_with_schedule, optimizer_step
from cocoracle.model import build_tiny_tokenizer, corpus_texts, initial_model, pick_device, pick_dtype
from cocoracle.precision import autocast, maybe_compile
from cocoracle.train import CoconutObjective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import matmul_gflops, tokens  # noqa: E402  (a script beside this one)
from figures import figure  # noqa: E402

GPT2_SIZES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
              "gpt2-xl": (48, 1600, 25)}  # name -> (n_layer, n_embd, n_head)
GPT2_VOCAB, GPT2_POSITIONS = 50257, 1024


def random_config(name: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The config of model `name` (a GPT-2 size, or a local directory), its vocabulary grown to the tokenizer's."""
    if name in GPT2_SIZES:
        n_layer, n_embd, n_head = GPT2_SIZES[name]
        config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=GPT2_POSITIONS, n_layer=n_layer, n_embd=n_embd,
                            n_head=n_head)
    else:
        config = AutoConfig.from_pretrained(name)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def random_model(name: str, rows: list[dict]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The architecture of model `name` with random weights, and the tokenizer the tiny model builds."""
    tokenizer = build_tiny_tokenizer(corpus_texts(rows))
    return AutoModelForCausalLM.from_config(random_config(name, tokenizer)), tokenizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch on CUDA; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/gpt2-large.yaml")
    parser.add_argument("--steps", type=int, default=300, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation happens here)")
    parser.add_argument("--random", action="store_true", help="random weights of the params' architecture")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--matmul-size", type=int, default=None, help="square matmul size (default 8192 on CUDA)")
    args = parser.parse_args()
    params = load_params(args.params)
    model_params, train, coconut = params["model"], params["train"], params["coconut"]
    device = pick_device(args.device)
    dtype = pick_dtype(model_params["dtype"], device)
    precision = model_params["precision"]

    n_rows = train["batch_size"] * min(args.steps + args.warmup, 64)  # at most 64 distinct batches, cycled
    rows = problems_table(make_splits(params["data"])["train"][:n_rows], 0).to_pylist()
    torch.manual_seed(run_seed(params))
    model, tokenizer = (random_model(model_params["name"], rows) if args.random
                        else initial_model(model_params, rows, run_seed(params)))
    model = model.to(device=device, dtype=dtype)
    model.train()
    codec, size = Codec(tokenizer), train["batch_size"]
    batches = [codec.batch(rows[i:i + size], 0, coconut["num_stages"], coconut["thoughts_per_step"],
                           **layout_options(coconut)).to(device) for i in range(0, len(rows) - size + 1, size)]
    objective = CoconutObjective(maybe_compile(model, train["compile"]))
    optimizer, scheduler = adamw_with_schedule(model.parameters(), train, args.steps + args.warmup,
                                               train["schedule"])

    def step(i: int) -> None:
        with autocast(precision, device):
            loss = objective(batches[i % len(batches)])
        loss.backward()
        optimizer_step(optimizer, scheduler, model.parameters(), train["grad_clip"])

    start = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    synchronize(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n_tokens = 0
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
        n_tokens += tokens(batches[i % len(batches)])
    synchronize(device)
    seconds = time.perf_counter() - start

    matmul_dtype = torch.bfloat16 if precision == "bf16-mixed" and dtype == torch.float32 else dtype
    peak = matmul_gflops(args.matmul_size or (8192 if device.type == "cuda" else 1024), device=device,
                         dtype=matmul_dtype) / 1000
    non_embedding = model.num_parameters(exclude_embeddings=True)
    achieved = 6 * non_embedding * n_tokens / seconds / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device={name} model={model_params['name']}{' (random weights)' if args.random else ''} "
          f"non-embedding params={non_embedding:,} precision={precision} dtype={dtype} compile={train['compile']}")
    print(f"batch={size} steps={args.steps} (after {args.warmup} warm-up steps: {warmup_s:.1f} s) "
          f"tokens/step={n_tokens / args.steps:.0f}")
    print(f"{1000 * seconds / args.steps:.1f} ms/step, {n_tokens / seconds:,.0f} tokens/s, "
          f"{size * args.steps / seconds:,.1f} examples/s")
    print(f"model {achieved:.2f} TFLOP/s; {matmul_dtype} matmul peak {peak:.2f} TFLOP/s; MFU {achieved / peak:.1%}")
    figure(f"{model_params['name']} on {name}: tokens/s", n_tokens / seconds)
    figure(f"{model_params['name']} on {name}: MFU", achieved / peak, "%")
    print(f"peak memory {peak_memory_gib(device):.2f} GiB ({'torch allocated' if device.type == 'cuda' else 'RSS'})")


if __name__ == "__main__":
    main()

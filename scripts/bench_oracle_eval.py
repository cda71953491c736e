"""Oracle evaluation's decoding: each distinct (prompt, injected vector) once, against every item decoded.

On a finished run's stage-K oracle and activation caches, taking turns in one process:
  - shared: `answer_conditions` as the evaluate-oracle step runs it (no_injection decodes each distinct prompt
    once, shuffled only the (prompt, source row) pairs the oracle condition did not already ask);
  - every item: the four conditions that ask the model, each decoding every item (the way before);
  - prompt passes: the same four with no token generated, an upper bound on what sharing the prompt pass's
    layers below the injection between conditions could still save.
The shared answers must equal every item's (the script fails otherwise).
Usage: python scripts/bench_oracle_eval.py RUN [--stage K] [--kind self] [--repeats 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from figures import figure

from cocoracle.cache_reader import ActivationCache
from cocoracle.config import ORACLE_KINDS, load_params
from cocoracle.oracle.data import OracleCodec
from cocoracle.oracle.evaluate import answer_conditions, condition_inputs
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.train import answer_prompts, load_oracle

CPU = torch.device("cpu")


def every_item(oracle_dir: Path, caches: dict, oracle: dict, stage: int, max_new_tokens: int, seed: int
               ) -> dict[str, list[str]]:
    """Each model condition's answers, every item decoded (max_new_tokens 0: the prompt passes alone)."""
    model, tokenizer, spec = load_oracle(oracle_dir, CPU)
    _, items, inputs = condition_inputs(caches, oracle, spec.source_layer, stage, seed)
    injector, codec = Injector(model, spec.inject_layers, spec.alpha), OracleCodec(tokenizer)
    prompts = items["prompt"].tolist()
    answers = {condition: answer_prompts(model, injector, codec, prompts, vectors, max_new_tokens,
                                         oracle["batch_size"]) for condition, (_, vectors) in inputs.items()}
    injector.remove()
    return answers


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory (params.yaml, models/, results/)")
    parser.add_argument("--stage", type=int, help="default: the all-latent stage (coconut.num_stages)")
    parser.add_argument("--kind", choices=ORACLE_KINDS, default="self")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the training seed whose models are read (default 0)")
    args = parser.parse_args()
    params = load_params(args.run / "params.yaml", args.seed)
    oracle = params["oracle"]
    stage = params["coconut"]["num_stages"] if args.stage is None else args.stage
    oracle_dir = args.run / f"models/seed-{args.seed}/oracle/{args.kind}/stage-{stage}"
    run_caches = args.run / f"results/seed-{args.seed}/activations/stage-{stage}"
    caches = {"train": ActivationCache(run_caches / "train"),  # the scored role is the held-out split's cache
              "test": ActivationCache(run_caches / params["run"]["held_out"])}
    times: dict[str, list[float]] = {"shared": [], "every item": [], "prompt passes": []}
    for _ in range(args.repeats):
        (items, shared), seconds = timed(answer_conditions, args.kind, oracle_dir, caches, params, stage, CPU)
        times["shared"].append(seconds)
        answers, seconds = timed(every_item, oracle_dir, caches, oracle, stage, oracle["max_new_tokens"], args.seed)
        times["every item"].append(seconds)
        times["prompt passes"].append(timed(every_item, oracle_dir, caches, oracle, stage, 0, args.seed)[1])
    for condition, expected in answers.items():
        if shared[condition] != expected:
            sys.exit(f"{condition}: the shared decoding's answers differ from decoding every item")
    n = len(items)
    best = {way: min(seconds) for way, seconds in times.items()}
    print(f"{args.kind} oracle, stage {stage}: {n} items per condition, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}; every answer the same both ways")
    for way, seconds in best.items():
        print(f"  {way:<14} {seconds:7.1f} s  ({4 * n / seconds:,.0f} condition-items/s)")
    ratio = best["every item"] / best["shared"]
    print(f"  shared vs every item: {ratio:.2f}x; prompt passes are {best['prompt passes'] / best['every item']:.0%} "
          "of decoding every item")
    figure("oracle evaluation: each distinct question decoded once vs every item", ratio, "x")
    figure("oracle evaluation: condition-items per second, shared", 4 * n / best["shared"], "/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

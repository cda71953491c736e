"""The compute floor of the DAG's training jobs: their FLOPs at the params' settings against this machine's matmul rate.

For every job that trains (Coconut stages 0..num_stages, the separate and the self-oracle of every oracle stage)
the FLOPs of one optimizer step are counted by torch's FlopCounterMode on batches laid out as the job lays them
out (random train problems at the stage and the stages `train.mix_prob` draws; oracle items built as the job
builds them, the self-oracle's rehearsal at its `mix`), averaged over --samples batches, and multiplied by the
optimizer steps the params ask for. Divided by the best square-matmul rate measured in the same process, that is
the job's wall time at 100 % of the machine's fp32 matmul rate: no implementation of these settings trains in
less on this machine. Validation decoding, evaluation, collection, probes and the oracles' evaluation are left
out, so the sum is a lower bound on the whole DAG.
With --logs (a finished run's logs/ directory) each job's measured wall time (the `done in` line that ends its
log) and the share of the matmul rate it reached are printed beside it.
Usage: python scripts/bench_floor.py [--params params.yaml] [--samples 8] [--logs RUN/logs]
"""
from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from bench_training import matmul_gflops, timed
from figures import figure
from torch.utils.flop_counter import FlopCounterMode

from cocoracle.activations import index_rows
from cocoracle.coconut import Codec, coconut_forward, layout_options, loss_fn
from cocoracle.config import ORACLE_KINDS, load_params, oracle_stages, run_seed
from cocoracle.data import make_splits, problems_table
from cocoracle.model import initial_model, load_base
from cocoracle.oracle.data import OracleCodec, build_items
from cocoracle.oracle.injection import Injector
from cocoracle.oracle.train import add_oracle_tokens, oracle_layers, oracle_loss, oracle_optimizer_steps, with_lora
from cocoracle.train import stage_optimizer_steps

CPU = torch.device("cpu")
DONE = re.compile(r"done in ([0-9.]+) s")


def flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one forward (the loss `step` returns) and its backward."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops()


def mean_flops(step: Callable[[np.ndarray], torch.Tensor], n_rows: int, batch_size: int, samples: int,
               rng: np.random.Generator) -> float:
    """Mean FLOPs of `step` over `samples` batches of random rows."""
    return float(np.mean([flops(lambda: step(rng.integers(0, n_rows, batch_size))) for _ in range(samples)]))


def coconut_step_flops(model, tokenizer, rows: list[dict], params: dict[str, Any], samples: int,
                       rng: np.random.Generator) -> list[float]:
    """Mean FLOPs of one micro-batch laid out at each stage 0..num_stages."""
    coconut, size = params["coconut"], params["train"]["batch_size"]
    codec = Codec(tokenizer)

    def at(stage: int) -> Callable[[np.ndarray], torch.Tensor]:
        def step(pick: np.ndarray) -> torch.Tensor:
            batch = codec.batch([rows[i] for i in pick], stage, coconut["num_stages"], coconut["thoughts_per_step"],
                                **layout_options(coconut))
            return loss_fn(coconut_forward(model, batch), batch)
        return step
    return [mean_flops(at(stage), len(rows), size, samples, rng) for stage in range(coconut["num_stages"] + 1)]


def training_jobs(per_stage: list[float], params: dict[str, Any], n_rows: int) -> list[tuple[str, int, float]]:
    """(job, optimizer steps, FLOPs per step) of every Coconut stage; mix_prob lays a batch out at an earlier stage."""
    train, jobs = params["train"], []
    for stage, own in enumerate(per_stage):
        earlier = np.mean(per_stage[:stage]) if stage else own
        micro = (1 - train["mix_prob"]) * own + train["mix_prob"] * earlier
        jobs.append((f"train stage {stage}", stage_optimizer_steps(train, stage, n_rows), micro * train["grad_accum"]))
    return jobs


def oracle_items(rows: list[dict], params: dict[str, Any], stage: int, source: int, kind: str) -> pd.DataFrame:
    """The items train_oracle builds from the stage's train cache (its index rebuilt from the problems)."""
    oracle = params["oracle"]
    rows = rows[: params["activations"]["max_problems"] or None]
    entries = [e for row in rows for e in index_rows(row, stage, params["coconut"], True)]
    index = pd.DataFrame(entries).assign(row=range(len(entries)))
    cache = type("IndexOnly", (), {"index": index})()
    rng = np.random.default_rng([run_seed(params), stage, ORACLE_KINDS.index(kind)])
    return build_items(cache, oracle["tasks"], source, rng)


def oracle_model(kind: str, params: dict[str, Any], coconut_model, tokenizer):
    """The model an oracle of `kind` fine-tunes (untrained weights of the right shape) and its tokenizer."""
    settings = params["oracle"][kind]
    if kind == "separate" and not str(settings["base"]).startswith("stage-"):
        model, tokenizer = load_base(settings["base"], CPU, torch.float32)
    else:
        model, tokenizer = copy.deepcopy(coconut_model), copy.deepcopy(tokenizer)
    new_ids = add_oracle_tokens(model, tokenizer)
    if kind == "separate" or settings["finetune"] == "lora":
        model = with_lora(model, settings["lora"], new_ids)
    return model.train(), tokenizer


def oracle_step_flops(model, tokenizer, injector: Injector, items: pd.DataFrame, rows: list[dict],
                      params: dict[str, Any], kind: str, stage: int, samples: int, rng: np.random.Generator) -> float:
    """Mean FLOPs of one optimizer step of an oracle: a batch of items, or (self, at `mix`) a rehearsal batch."""
    coconut, settings = params["coconut"], params["oracle"][kind]
    size, mix = settings["train"]["batch_size"], settings.get("mix", 0.0)
    codec, rehearsal_codec = OracleCodec(tokenizer), Codec(tokenizer)
    width = model.get_input_embeddings().weight.shape[1]

    def question(pick: np.ndarray) -> torch.Tensor:
        batch = codec.batch(items["prompt"].iloc[pick].tolist(), items["target"].iloc[pick].tolist())
        return oracle_loss(model, injector, batch, torch.randn(len(pick), width))

    def rehearsal(pick: np.ndarray) -> torch.Tensor:
        batch = rehearsal_codec.batch([rows[i] for i in pick], stage, coconut["num_stages"],
                                      coconut["thoughts_per_step"], **layout_options(coconut))
        return loss_fn(coconut_forward(model, batch), batch)
    per_step = (1 - mix) * mean_flops(question, len(items), size, samples, rng)
    return per_step + (mix * mean_flops(rehearsal, len(rows), size, samples, rng) if mix else 0.0)


def oracle_jobs(params: dict[str, Any], rows: list[dict], coconut_model, tokenizer, samples: int,
                rng: np.random.Generator) -> list[tuple[str, int, float]]:
    """(job, optimizer steps, mean FLOPs per step) of every oracle the params train."""
    oracle, jobs = params["oracle"], []
    source, inject = oracle_layers(oracle, coconut_model.config.num_hidden_layers)
    for kind in ORACLE_KINDS:
        settings = oracle[kind]
        model, oracle_tokenizer = oracle_model(kind, params, coconut_model, tokenizer)
        injector = Injector(model, inject, settings["alpha"])
        for stage in oracle_stages(params):
            items = oracle_items(rows, params, stage, source, kind)
            per_step = oracle_step_flops(model, oracle_tokenizer, injector, items, rows, params, kind, stage,
                                         samples, rng)
            steps = oracle_optimizer_steps(settings["train"], len(items), settings.get("mix", 0.0))
            jobs.append((f"{kind} oracle stage {stage}", steps, per_step))
        injector.remove()
    return jobs


def layer_matmul_gflops(width: int, tokens: int, rounds: int = 5, calls: int = 20) -> float:
    """The rate of a GPT-2 block's weight matmuls (attention in/out, MLP in/out) at `tokens` rows: forward, input
    gradient and weight gradient of each, as a training step runs them; the best of `rounds`."""
    shapes = [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)]
    pairs = []
    for d_in, d_out in shapes:
        x, w, g = torch.randn(tokens, d_in), torch.randn(d_in, d_out), torch.randn(tokens, d_out)
        pairs += [(x, w), (g, w.T), (x.T, g)]
    work = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)

    def products() -> None:
        for a, b in pairs:
            torch.matmul(a, b)
    return max(work / timed(products, calls) for _ in range(rounds)) / 1e9


def measured_seconds(logs: Path | None, job: str) -> float | None:
    """The `done in` seconds of the job's log in a finished run, if given and there."""
    if logs is None:
        return None
    words = job.split()
    name = (f"train/stage-{words[-1]}.log" if words[0] == "train"
            else f"oracle/train-{words[0]}-stage-{words[-1]}.log")
    found = DONE.findall((logs / name).read_text()) if (logs / name).is_file() else []
    return float(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", type=int, default=8, help="batches averaged per job")
    parser.add_argument("--logs", type=Path, help="a finished run's logs/: measured wall times beside the floor")
    parser.add_argument("--dag-minutes", type=float, default=15, help="issue 13's target for the whole DAG")
    parser.add_argument("--seeds-minutes", type=float, default=45, help="issue 13's target for three seeds")
    args = parser.parse_args()
    params = load_params(args.params)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    rows = problems_table(make_splits(params["data"])["train"], 0).to_pylist()
    model, tokenizer = initial_model(params["model"], rows, run_seed(params))
    model.train()
    jobs = training_jobs(coconut_step_flops(model, tokenizer, rows, params, args.samples, rng), params, len(rows))
    jobs += oracle_jobs(params, rows, model, tokenizer, args.samples, rng)
    peak = matmul_gflops() * 1e9
    print(f"model={params['model']['name']} threads={torch.get_num_threads()} samples={args.samples} "
          f"fp32 matmul 1024x1024: {peak / 1e9:.1f} GFLOP/s")
    width = model.config.hidden_size
    rates = {n: layer_matmul_gflops(width, n) for n in (params["train"]["batch_size"], 1024, 3072)}
    print(f"a block's weight matmuls (d={width}) at " + ", ".join(
        f"{n} rows: {r:.1f} GFLOP/s ({r * 1e9 / peak:.0%})" for n, r in rates.items())
          + f"; {params['train']['batch_size']} rows is one thought pass of a batch")
    print(f"{'job':<26}{'steps':>8}{'GFLOP/step':>12}{'PFLOP':>8}{'floor s':>9}{'measured s':>12}{'of peak':>9}")
    measured = {job: measured_seconds(args.logs, job) for job, _, _ in jobs}
    for job, steps, per_step in jobs:
        floor, seconds = steps * per_step / peak, measured[job]
        shown = f"{seconds:>12.0f}{floor / seconds:>9.1%}" if seconds else f"{'-':>12}{'-':>9}"
        print(f"{job:<26}{steps:>8}{per_step / 1e9:>12.2f}{steps * per_step / 1e15:>8.3f}{floor:>9.0f}{shown}")
    total = sum(steps * per_step for _, steps, per_step in jobs)
    if all(measured.values()):
        seconds = sum(measured.values())
        print(f"{'all training jobs':<26}{'':>28}{total / peak:>9.0f}{seconds:>12.0f}{total / peak / seconds:>9.1%}")
        figure("training jobs of the run: share of the matmul rate", total / peak / seconds, "%", at_least=0.5)
    last = f"stage {max(oracle_stages(params), default=params['coconut']['num_stages'])}"
    headline = sum(steps * per_step for job, steps, per_step in jobs if job.startswith("train") or job.endswith(last))
    for what, flop, minutes in [("the DAG's training jobs", total, args.dag_minutes),
                                (f"three seeds' training and {last} oracles", 3 * headline, args.seeds_minutes)]:
        need = flop / (60 * minutes)
        print(f"{what}: {flop / 1e15:.3f} PFLOP, {flop / peak / 60:.1f} min at 100 % of the matmul rate; "
              f"in {minutes:g} min they need {need / 1e9:.0f} GFLOP/s sustained, {need / peak:.2f}x the matmul rate")
        figure(f"{what} in {minutes:g} min: the share of the matmul rate they need", need / peak, "%")

if __name__ == "__main__":
    main()

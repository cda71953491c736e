"""Where a Coconut training step's CPU time goes, and what four cheap changes would buy, side by side.

For each curriculum stage, on the params' model (untrained) at train.batch_size, one forward + backward:
  - a torch.profiler breakdown of the step's operator self time by kind (matrix products, elementwise, random
    numbers for dropout, softmax, layer norm, data movement, other), and the wall time no operator accounts for
    (Python, autograd and dispatch overhead);
  - the step time of variants of the same model, interleaved in one loop so that machine load hits all alike:
    as configured; GPT-2's GELU as the unfused gelu_new (before the tiny model used the fused kernel); no
    dropout (a science setting, not changed here: the ratio says what choosing it on val could save); bf16
    autocast as `model.precision: bf16-mixed` runs it (also a science setting; CPUs with AVX512-BF16 or AMX
    have bf16 matrix units); one thread instead of the process's threads (what running two single-thread jobs
    side by side could gain); with --compile also the model under torch.compile as `train.compile: true` runs
    it (its compilation, in the warm-up step of each stage, is not timed).
Usage: python scripts/bench_step_profile.py [--params params.yaml] [--repeats 8] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from bench_training import in_bf16, interleaved, train_step
from torch.profiler import ProfilerActivity, profile
from transformers.activations import ACT2FN

from cocoracle.coconut import CoconutBatch, Codec, coconut_forward, layout_options
from cocoracle.config import load_params, run_seed
from cocoracle.data import make_splits, problems_table
from cocoracle.model import initial_model
from cocoracle.precision import maybe_compile

KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "elementwise": ("aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::div", "aten::div_", "aten::sub",
                    "aten::pow", "aten::tanh", "aten::tanh_backward", "aten::gelu", "aten::gelu_backward",
                    "aten::where", "aten::neg", "aten::rsub", "aten::masked_fill", "aten::masked_fill_"),
    "dropout RNG": ("aten::bernoulli_", "aten::native_dropout", "aten::native_dropout_backward"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax",
                "aten::_log_softmax_backward_data", "aten::nll_loss_forward", "aten::nll_loss_backward"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "data movement": ("aten::copy_", "aten::cat", "aten::index", "aten::index_select", "aten::embedding_dense_backward",
                      "aten::fill_", "aten::zero_", "aten::clone", "aten::index_add_", "aten::scatter_add_"),
}


def step_fn(model, batch: CoconutBatch) -> Callable[[], None]:
    """One forward + backward of the cached path on `batch`, as bench_training times it."""
    return train_step(model, coconut_forward, [batch])


def breakdown(step: Callable[[], None], repeats: int) -> tuple[float, dict[str, float]]:
    """Wall seconds per step under the profiler, and seconds per step of operator self time by kind."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        wall = (time.perf_counter() - start) / repeats
    by_kind = dict.fromkeys([*KINDS, "other ops"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), "other ops")
        by_kind[kind] += event.self_cpu_time_total / 1e6 / repeats
    return wall, by_kind


def variants(model, compiled: bool) -> dict[str, torch.nn.Module]:
    """The model as configured, with the unfused GELU, without dropout and (if asked) compiled."""
    unfused, no_dropout = copy.deepcopy(model), copy.deepcopy(model)
    for block in unfused.transformer.h:
        block.mlp.act = ACT2FN["gelu_new"]
    for module in no_dropout.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    no_dropout.config.attn_pdrop = 0.0
    out = {"as configured": model, "unfused GELU": unfused, "no dropout": no_dropout}
    return out | {"compiled": maybe_compile(copy.deepcopy(model), True)} if compiled else out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    args = parser.parse_args()
    params = load_params(args.params)
    coconut, size = params["coconut"], params["train"]["batch_size"]
    rows = problems_table(make_splits(params["data"])["train"], 0).to_pylist()
    model, tokenizer = initial_model(params["model"], rows, run_seed(params))
    model.train()
    codec, threads = Codec(tokenizer), torch.get_num_threads()
    print(f"model={params['model']['name']} activation={model.config.activation_function} "
          f"dropout={model.config.resid_pdrop} batch={size} threads={threads} repeats={args.repeats}")
    print("operator self time per step by kind, as a share of the step's wall time (under the profiler):")
    print(f"{'stage':<7}{'wall ms':>9}" + "".join(f"{k:>15}" for k in [*KINDS, "other ops", "no operator"]))
    batches = {}
    for stage in range(coconut["num_stages"] + 1):
        batches[stage] = codec.batch(rows[:size], stage, coconut["num_stages"], coconut["thoughts_per_step"],
                                     **layout_options(coconut))
        wall, by_kind = breakdown(step_fn(model, batches[stage]), args.repeats)
        shares = [*by_kind.values(), max(wall - sum(by_kind.values()), 0.0)]
        print(f"{stage:<7}{wall * 1000:>9.1f}" + "".join(f"{s / wall:>15.1%}" for s in shares), flush=True)
    print("\nms per forward + backward, variants interleaved; ratio = variant time / as configured "
          "(> 1: the variant is slower)")
    models = variants(model, args.compile)
    names = [*models, "bf16 autocast", "1 thread"]
    print(f"{'stage':<7}" + "".join(f"{n:>16}" for n in names) + "".join(f"{n + ' ratio':>22}" for n in names[1:]))
    for stage, batch in batches.items():
        steps = {name: step_fn(m, batch) for name, m in models.items()} | {
            "bf16 autocast": in_bf16(step_fn(model, batch)), "1 thread": step_fn(model, batch)}
        per = dict.fromkeys(steps, threads) | {"1 thread": 1}
        t = interleaved(steps, per, args.repeats)
        base = t["as configured"]
        print(f"{stage:<7}" + "".join(f"{t[n] * 1000:>16.1f}" for n in names)
              + "".join(f"{t[n] / base:>21.2f}x" for n in names[1:]), flush=True)
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()

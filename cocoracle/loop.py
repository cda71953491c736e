"""What the Coconut and the oracle training loops share: the order of examples, the optimizer and its
schedule, one optimizer step, when to validate, the throughput they log, and the dvclive logger."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import get_scheduler

from cocoracle.atomic import write_text
from cocoracle.headline import training

if TYPE_CHECKING:
    from dvclive import Live


def epoch_order(n_rows: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices to draw in turn: fresh permutations (epochs) back to back, enough for n_draws plus one epoch."""
    return np.concatenate([rng.permutation(n_rows) for _ in range(math.ceil(n_draws / n_rows) + 1)])


def validation_steps(steps: int) -> set[int]:
    """The optimizer steps (counted from 1) after which to validate: the end of each quarter of training."""
    return {max(1, round(steps * q / 4)) for q in (1, 2, 3, 4)}


class Throughput:
    """Training examples per second since the last restart (restart after validating, so that validation's own
    time is not counted)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.examples, self.since = 0, time.perf_counter()

    def add(self, examples: int) -> None:
        self.examples += examples

    def per_second(self) -> float:
        return self.examples / max(time.perf_counter() - self.since, 1e-9)


def adamw_with_schedule(parameters: Iterable[torch.nn.Parameter], hp: dict[str, Any], steps: int,
                        schedule: str = "cosine") -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (hp: lr, weight_decay) and its learning-rate schedule over `steps`, after hp['warmup_steps']."""
    optimizer = torch.optim.AdamW(parameters, lr=hp["lr"], weight_decay=hp["weight_decay"])
    name = "constant_with_warmup" if schedule == "constant" else schedule
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=hp["warmup_steps"], num_training_steps=steps)


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, parameters: Iterable[torch.nn.Parameter],
                   grad_clip: float) -> None:
    """Clip the gradient norm (when grad_clip > 0), step the optimizer and the schedule, clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def live_logger(live_dir: str | Path, start_step: int = 0, headline: tuple[str, ...] = ()) -> Iterator[Live]:
    """A dvclive logger that writes its metric files only (no DVC experiment, dvc.yaml or report); from
    start_step > 0 it continues the curves already in live_dir (a resumed run). Once the run has ended, its
    summary (live_dir/metrics.json, which DVC shows as metrics) is rewritten as the run's headline under the
    key path `headline` (cocoracle/headline.py), so that each run's columns in `dvc exp show` have a name of
    their own; the curves under live_dir/plots/metrics are dvclive's, untouched."""
    # imported here: the loops' other parts run without DVC (scripts/bench_gpu.py on a bare GPU machine)
    from dvclive import Live

    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, resume=start_step > 0) as live:
        live.step = start_step
        yield live
    if headline:
        write_text(live.metrics_file, json.dumps(training(headline, live.summary), indent=2) + "\n")

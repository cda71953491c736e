"""The training scaffolding shared by the Coconut and the oracle loops."""
from __future__ import annotations

import numpy as np
import torch

from cocoracle.loop import Throughput, adamw_with_schedule, epoch_order, optimizer_step, validation_steps


def test_epoch_order_is_back_to_back_permutations_plus_one():
    order = epoch_order(5, 12, np.random.default_rng(3))
    assert len(order) == 5 * 4  # ceil(12 / 5) epochs and one more
    for epoch in range(4):
        assert sorted(order[5 * epoch:5 * epoch + 5].tolist()) == list(range(5))
    rng = np.random.default_rng(3)  # the same draws as permuting epoch by epoch
    assert np.array_equal(order, np.concatenate([rng.permutation(5) for _ in range(4)]))


def test_validation_steps_end_each_quarter():
    assert validation_steps(10) == {2, 5, 8, 10}
    assert validation_steps(3) == {1, 2, 3}
    assert validation_steps(1) == {1}


def test_constant_schedule_warms_up_then_stays_and_clipping_bounds_the_step():
    weight = torch.nn.Parameter(torch.zeros(3))
    hp = {"lr": 0.1, "weight_decay": 0.0, "warmup_steps": 2}
    optimizer, scheduler = adamw_with_schedule([weight], hp, 10, "constant")
    rates = []
    for _ in range(4):
        weight.grad = torch.full((3,), 100.0)
        optimizer_step(optimizer, scheduler, [weight], grad_clip=1.0)
        rates.append(scheduler.get_last_lr()[0])
        assert weight.grad is None
    assert rates == [0.05, 0.1, 0.1, 0.1]


def test_throughput_counts_examples_since_the_last_restart(monkeypatch):
    clock = iter([10.0, 12.0, 15.0, 16.0])  # perf_counter at: init, first reading, restart, second reading
    monkeypatch.setattr("cocoracle.loop.time.perf_counter", lambda: next(clock))
    speed = Throughput()
    speed.add(64)
    speed.add(64)
    assert speed.per_second() == 128 / 2.0
    speed.restart()  # validation ran in between: neither its time nor the examples before count
    speed.add(32)
    assert speed.per_second() == 32 / 1.0

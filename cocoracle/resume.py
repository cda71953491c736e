"""Resume state of a training loop, so that a killed step continues where it stopped.

A loop saves, every `resume.every_steps` optimizer steps or `resume.every_minutes` minutes (whichever comes
first), the model's weights, the optimizer and schedule, every RNG state, the step reached and a snapshot of
its dvclive directory, in `<out>.resume/` beside the step's output: no engine deletes that directory as an
incomplete output. Rerunning the same command continues from it and gives the bytes an uninterrupted run
gives; a state made by other params, inputs or code is refused in one line and training starts over. It is
removed when the step's output is written. Everything is safetensors or JSON (no pickles).

SIGTERM (SLURM's time limit, and the SLURM profile's `--signal=TERM@120` ahead of it; preemption, `kill`) and
SIGUSR1 make the loop save after the optimizer step in progress and stop with `Preempted`.

Data-parallel training (torchrun) saves one state for all its processes: the first writes the weights, the
optimizer, the schedule and the dvclive snapshot (the same in every process), every process its own RNG
states (`rng-rank<r>.safetensors`: dropout differs per process), into one temporary directory renamed into place
once all have written. The first process's clock decides when a state is due, and a stop signal received by any
process makes all of them save and stop after the same step. A state made by another number of processes is
refused like one from other params.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from cocoracle.atomic import atomic_dir
from cocoracle.distributed import DataParallel
from cocoracle.provenance import input_hash

log = logging.getLogger(__name__)
SUFFIX = ".resume"
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Preempted(SystemExit):
    """The run was asked to stop and its resume state is saved: exits with status 1 and this one line."""


def resume_dir(out_dir: str | Path) -> Path:
    """Where the step writing out_dir keeps its resume state."""
    out = Path(out_dir)
    return out.with_name(out.name + SUFFIX)


def fingerprint(params: dict[str, Any], inputs: Iterable[str | Path], code: Iterable[str | Path]) -> str:
    """A hash of what the run's results depend on: its params, its input files and its code files."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in params.items() if k != "resume"}, sort_keys=True).encode())
    for path in [*inputs, *code]:
        digest.update(f"{path}\0{input_hash(path)}\n".encode())
    return digest.hexdigest()


class Saver:
    """Decides when to save, saves and restores one loop's state (with `dp`: of all its training processes,
    every one of which makes the same calls at the same steps)."""

    def __init__(self, out_dir: str | Path, live_dir: str | Path, fingerprint: str, settings: dict[str, Any],
                 dp: DataParallel | None = None):
        self.path, self.live_dir, self.fingerprint = resume_dir(out_dir), Path(live_dir), fingerprint
        self.dp = dp or DataParallel(0, 1, torch.device("cpu"))
        self.every_steps, self.every_minutes = settings.get("every_steps"), settings.get("every_minutes")
        self.last_save = time.monotonic()
        self.saved_step: int | None = None
        self.stop_signal: int | None = None
        self.extra: dict[str, Any] = {}
        self.extra_tensors: dict[str, torch.Tensor] = {}

    @contextmanager
    def watching_signals(self) -> Iterator[None]:
        """While inside, SIGTERM and SIGUSR1 only ask the loop to stop (see `stop`)."""
        def ask(signum: int, _frame: Any) -> None:
            self.stop_signal = signum
        previous = {sig: signal.signal(sig, ask) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_if_asked(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any, extra: Callable[[], tuple[dict[str, Any], dict[str, torch.Tensor]]] | None = None
                      ) -> None:
        """After a stop signal (to any of the processes): save the state after `step` optimizer steps and raise
        Preempted (its line from the first process only)."""
        signum = self.stop_signal
        if self.dp.world > 1:
            signum = int(self.dp.max(torch.tensor(signum or 0, device=self.dp.device))) or None
        if signum is None:
            return
        if self.saved_step != step:  # (not saved already because it was due)
            self.save(step, model, optimizer, scheduler, *(extra() if extra else ()))
        if not self.dp.main:
            raise Preempted(1)
        raise Preempted(f"{signal.Signals(signum).name}: stopped after step {step}; the resume state is "
                        f"in {self.path}, rerun the same command to continue")

    def due(self, step: int) -> bool:
        """Whether to save after `step` optimizer steps (the first process's clock decides for all)."""
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_minutes) and time.monotonic() - self.last_save >= 60 * self.every_minutes
        if self.dp.world > 1:
            return bool(self.dp.max(torch.tensor(int(self.dp.main and (by_steps or by_time)), device=self.dp.device)))
        return by_steps or by_time

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             extra: dict[str, Any] | None = None, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the state after `step` optimizer steps, with the loop's own `extra` (JSON) and `extra_tensors`
        (a kill mid-save leaves the previous state or none, never a partial one)."""
        with self._writing() as tmp:
            save_file(_rng_states(), str(tmp / self._rng_file))
            if self.dp.main:
                save_file({k: v.contiguous() for k, v in (extra_tensors or {}).items()},
                          str(tmp / "extra.safetensors"))
                save_model(model, str(tmp / "model.safetensors"))
                tensors, rest = _split_optimizer(optimizer.state_dict())
                save_file(tensors, str(tmp / "optimizer.safetensors"))
                if self.live_dir.is_dir():
                    shutil.copytree(self.live_dir, tmp / "live")
                (tmp / "state.json").write_text(json.dumps({"fingerprint": self.fingerprint, "step": step,
                                                            "processes": self.dp.world, "optimizer": rest,
                                                            "scheduler": scheduler.state_dict(),
                                                            "extra": extra or {}}))
        self.last_save, self.saved_step = time.monotonic(), step
        if self.dp.main:
            log.info("resume state after step %d saved to %s", step, self.path)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load a matching state and return the step it reached (0 when there is none or it does not match);
        the loop's own state is then in `extra` and `extra_tensors`."""
        state = self._matching_state() if self.dp.main else None
        if self.dp.world > 1:
            state = self.dp.broadcast(state)
        if state is None:
            return 0
        load_model(model, str(self.path / "model.safetensors"))
        optimizer.load_state_dict(_join_optimizer(load_file(str(self.path / "optimizer.safetensors")),
                                                  state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(load_file(str(self.path / self._rng_file)))
        self.extra, self.extra_tensors = state["extra"], load_file(str(self.path / "extra.safetensors"))
        if self.dp.main:
            if self.live_dir.exists():
                shutil.rmtree(self.live_dir)
            if (self.path / "live").is_dir():
                shutil.copytree(self.path / "live", self.live_dir)
            log.info("resuming from %s after step %d", self.path, state["step"])
        return int(state["step"])

    def clear(self) -> None:
        """Remove the state (the step's output is written); the first process does."""
        if self.dp.main:
            shutil.rmtree(self.path, ignore_errors=True)

    @property
    def _rng_file(self) -> str:
        return "rng.safetensors" if self.dp.world == 1 else f"rng-rank{self.dp.rank}.safetensors"

    def _matching_state(self) -> dict[str, Any] | None:
        """state.json when the state exists and this run may continue it; a refused state is removed."""
        state_file = self.path / "state.json"
        if not state_file.is_file():
            return None
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s: made by other params, inputs or code; ignored, training starts over", self.path)
            self.clear()
            return None
        if state.get("processes", 1) != self.dp.world:
            log.warning("%s: made by %d training processes, this run has %d; ignored, training starts over",
                        self.path, state.get("processes", 1), self.dp.world)
            self.clear()
            return None
        return state

    @contextmanager
    def _writing(self) -> Iterator[Path]:
        """The temporary directory every process writes its part of the state into; the first process renames it
        into place once all have written, and none goes on before that."""
        if self.dp.world == 1:
            with atomic_dir(self.path) as tmp:
                yield tmp
            return
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_dir(self.path)) if self.dp.main else None
            tmp = Path(self.dp.broadcast(str(tmp) if tmp else None))
            yield tmp
            self.dp.barrier()  # every part is written
        self.dp.barrier()  # the state is in place


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as tensors (for safetensors) and the JSON rest."""
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)

"""Resume state of a training loop, so that a killed step continues where it stopped.

A loop saves, every `resume.every_steps` optimizer steps or `resume.every_minutes` minutes (whichever comes
first), the model's weights, the optimizer and schedule, every RNG state, the step reached and a snapshot of
its dvclive directory, in `<out>.resume/` beside the step's output: no engine deletes that directory as an
incomplete output. Rerunning the same command continues from it and gives the bytes an uninterrupted run
gives; a state made by other params, inputs or code is refused in one line and training starts over. It is
removed when the step's output is written. Everything is safetensors or JSON (no pickles).

SIGTERM (SLURM's time limit, preemption, `kill`) and SIGUSR1 (what the SLURM profile asks for ahead of the
limit) make the loop save after the optimizer step in progress and stop with `Preempted`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from cocoracle.atomic import atomic_dir
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
    """Decides when to save, saves and restores one loop's state."""

    def __init__(self, out_dir: str | Path, live_dir: str | Path, fingerprint: str, settings: dict[str, Any]):
        self.path, self.live_dir, self.fingerprint = resume_dir(out_dir), Path(live_dir), fingerprint
        self.every_steps, self.every_minutes = settings.get("every_steps"), settings.get("every_minutes")
        self.last_save = time.monotonic()
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
        """After a stop signal: save the state after `step` optimizer steps and raise Preempted."""
        if self.stop_signal is None:
            return
        self.save(step, model, optimizer, scheduler, *(extra() if extra else ()))
        raise Preempted(f"{signal.Signals(self.stop_signal).name}: stopped after step {step}; the resume state is "
                        f"in {self.path}, rerun the same command to continue")

    def due(self, step: int) -> bool:
        """Whether to save after `step` optimizer steps."""
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_minutes) and time.monotonic() - self.last_save >= 60 * self.every_minutes
        return by_steps or by_time

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             extra: dict[str, Any] | None = None, extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the state after `step` optimizer steps, with the loop's own `extra` (JSON) and `extra_tensors`
        (a kill mid-save leaves the previous state or none, never a partial one)."""
        with atomic_dir(self.path) as tmp:
            save_file({k: v.contiguous() for k, v in (extra_tensors or {}).items()}, str(tmp / "extra.safetensors"))
            save_model(model, str(tmp / "model.safetensors"))
            tensors, rest = _split_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file(_rng_states(), str(tmp / "rng.safetensors"))
            if self.live_dir.is_dir():
                shutil.copytree(self.live_dir, tmp / "live")
            (tmp / "state.json").write_text(json.dumps({"fingerprint": self.fingerprint, "step": step,
                                                        "optimizer": rest, "scheduler": scheduler.state_dict(),
                                                        "extra": extra or {}}))
        self.last_save = time.monotonic()
        log.info("resume state after step %d saved to %s", step, self.path)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load a matching state and return the step it reached (0 when there is none or it does not match);
        the loop's own state is then in `extra` and `extra_tensors`."""
        state_file = self.path / "state.json"
        if not state_file.is_file():
            return 0
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s: made by other params, inputs or code; ignored, training starts over", self.path)
            self.clear()
            return 0
        load_model(model, str(self.path / "model.safetensors"))
        optimizer.load_state_dict(_join_optimizer(load_file(str(self.path / "optimizer.safetensors")),
                                                  state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(load_file(str(self.path / "rng.safetensors")))
        self.extra, self.extra_tensors = state["extra"], load_file(str(self.path / "extra.safetensors"))
        if self.live_dir.exists():
            shutil.rmtree(self.live_dir)
        if (self.path / "live").is_dir():
            shutil.copytree(self.path / "live", self.live_dir)
        log.info("resuming from %s after step %d", self.path, state["step"])
        return int(state["step"])

    def clear(self) -> None:
        """Remove the state (the step's output is written)."""
        shutil.rmtree(self.path, ignore_errors=True)


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

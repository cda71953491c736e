"""Numerics of a run: bf16 autocast where the device supports it, and optional torch.compile."""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def precision_of(model_params: dict[str, Any]) -> str:
    """A checkpoint's `model.precision` (checkpoints written before the key existed ran in fp32)."""
    return model_params.get("precision", "fp32")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for 'bf16-mixed' (weights and optimizer stay in their dtype); a no-op for 'fp32'
    and, with a warning, on a GPU without bf16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("model.precision: %s has no bf16, running in fp32", torch.cuda.get_device_name(device))
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def maybe_compile(model: PreTrainedModel, enabled: bool) -> PreTrainedModel:
    """Compile the model's forward in place (same object, same state dict) when enabled."""
    if enabled:
        model.compile(dynamic=True)
    return model

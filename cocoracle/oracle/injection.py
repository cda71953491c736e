"""Norm-matched activation injection (Karvonen et al.): h' = h + α·‖h‖·v/‖v‖ at placeholder positions.

The only implementation of the formula. An Injector hooks the model's decoder blocks: injecting at
hidden-state index j (0 = the embeddings' output) adds to the input of block j. It acts only while armed
with a batch's vectors and placeholder mask, i.e. on the prompt pass; later cached decoding passes are
left alone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cocoracle.config import InputError


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (works through peft wrappers and for GPT-2/Llama-style models)."""
    n_layer = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layer:
            return module
    raise InputError(f"{type(model).__name__}: cannot find its {n_layer} decoder blocks to inject into")


def steer(hidden: torch.Tensor, vectors: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """hidden (B, S, d) plus α·‖h‖·v/‖v‖ where mask (B, S) is set; vectors (B, d), one per row; term detached."""
    direction = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    term = alpha * hidden.norm(dim=-1, keepdim=True) * direction[:, None, :].to(hidden.dtype)
    return torch.where(mask[..., None], hidden + term.detach(), hidden)


class Injector:
    """Adds armed vectors at placeholder positions of the residual stream before the given blocks."""

    def __init__(self, model: nn.Module, layers: list[int], alpha: float):
        blocks = decoder_blocks(model)
        for layer in layers:
            if not 0 <= layer < len(blocks):
                raise InputError(f"oracle inject layer {layer}: must be within 0..{len(blocks) - 1} for this model")
        self.alpha = alpha
        self.vectors: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.handles = [blocks[layer].register_forward_pre_hook(self._hook, with_kwargs=True) for layer in layers]

    def arm(self, vectors: torch.Tensor, mask: torch.Tensor) -> None:
        """Inject `vectors` (B, d) at `mask` (B, S) on the next passes over a (B, S) sequence."""
        self.vectors, self.mask = vectors, mask.bool()

    def disarm(self) -> None:
        self.vectors = self.mask = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
        if self.vectors is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[:2] != self.mask.shape:
            raise RuntimeError(f"injector armed for {tuple(self.mask.shape)} but the pass is {tuple(hidden.shape[:2])}")
        steered = steer(hidden, self.vectors, self.mask, self.alpha)
        if args:
            return (steered, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": steered}

"""torch's argument checks and messages, shared by the optimizer classes."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_lr", "check_nonneg", "check_betas", "check_impl_flags", "check_cautious"]


def check_lr(lr: float | torch.Tensor) -> None:
    """torch's learning-rate checks (a tensor lr must hold one element)."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_nonneg(value: Any, what: str) -> None:
    """Raise torch's ``Invalid <what>: <value>`` unless ``value >= 0``."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas: tuple[Any, Any]) -> None:
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")


def check_impl_flags(foreach: bool | None, fused: bool | None, differentiable: bool) -> None:
    """The combinations of implementation flags torch refuses."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def check_cautious(cautious: bool, *, fused: bool | None = None, compile: bool = False) -> None:
    """``cautious=True`` needs a mean over each whole parameter (optimkit.transforms.caution):
    no torch fused kernel has it, and the compiled loop runs on packs and chunks."""
    if not isinstance(cautious, bool):
        raise ValueError(f"cautious must be True or False, got {cautious!r}")
    if cautious and fused:
        raise ValueError("cautious=True has no fused kernel: use fused=False (or None)")
    if cautious and compile:
        raise ValueError(
            "cautious=True needs a mean over each whole parameter; compile=True compiles the "
            "elementwise step of packs and chunks: use one or the other"
        )

"""Small helpers shared by the optimizer classes: torch's validation messages, tensor views."""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "check_lr",
    "check_nonneg",
    "check_betas",
    "check_impl_flags",
    "as_real",
    "to_scalar",
    "differentiating",
]


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


def as_real(*tensors: torch.Tensor | None) -> list[Any]:
    """View complex tensors as real ``(..., 2)`` tensors so that elementwise rules treat the
    real and imaginary parts as independent coordinates (torch's convention)."""
    return [torch.view_as_real(t) if t is not None and t.is_complex() else t for t in tensors]


def to_scalar(x: Any) -> Any:
    """A one-element tensor hyperparameter as a 0-d tensor; anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def differentiating() -> bool:
    """True while a step runs with ``differentiable=True`` (autograd records the update).

    Rules then avoid the few in-place updates that would overwrite tensors autograd saved
    for backward (``sqrt().add_``, ``maximum(out=)``). The replacements compute the same
    values with the same ops, so the numbers do not change -- only the graph can be built.
    """
    return torch.is_grad_enabled()

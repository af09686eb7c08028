"""Small helpers shared by the optimizer classes: torch's validation messages, tensor views."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "check_lr",
    "check_nonneg",
    "check_betas",
    "check_impl_flags",
    "check_compile",
    "as_real",
    "to_scalar",
    "differentiating",
    "item",
    "select",
    "at_least",
    "taken",
    "add_scaled",
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


def check_compile(compile: bool, fused: bool | None = None, differentiable: bool = False) -> bool:
    """Validate ``compile=True`` (see :mod:`optimkit.compiled`) against the other flags."""
    if compile and fused:
        raise ValueError(
            "compile=True and fused=True cannot be used together: choose torch's fused kernel "
            "(fused=True) or the compiled update rule (compile=True)"
        )
    if compile and differentiable:
        raise ValueError(
            "compile=True does not support differentiable=True: differentiate through the exact "
            "path (compile=False)"
        )
    return bool(compile)


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


# ---------------------------------------------------------------------- scalars under compile
# A rule computes its step-dependent scalars (bias corrections, NAdam's momentum schedule,
# ASGD's eta and mu) on the host, from ``.item()`` of a scalar state tensor: that is what torch's
# for-loop does, and the exact path must keep its bits. Under ``torch.compile`` (``compile=True``,
# see :mod:`optimkit.compiled`) ``.item()`` would end the graph, and a branch on its value would
# specialize it; hyperparameters come in as 0-d tensors there, so that a scheduler changing them
# does not recompile. The helpers below do exactly what the plain Python did on the exact path;
# only while torch.compile traces do they keep scalars 0-d tensors, so that the scalar math is
# part of the one compiled loop. (Dynamo itself rewrites the in-place ``addcdiv_``/``addcmul_``/
# ``add_`` with a tensor ``value``/``alpha``.)


def item(t: torch.Tensor) -> Any:
    """``t.item()``; while torch.compile traces, ``t`` itself in float64 (a Python float's precision)."""
    if torch.compiler.is_compiling():
        return t.to(torch.float64)
    return t.item()


def select(cond: Any, if_true: Callable[[], Any], if_false: Callable[[], Any]) -> Any:
    """``if_true() if cond else if_false()``; while torch.compile traces with a tensor ``cond``,
    ``torch.where`` of both (elementwise, so the compiled loop computes both and keeps one)."""
    if isinstance(cond, torch.Tensor) and torch.compiler.is_compiling():
        return torch.where(cond, if_true(), if_false())
    return if_true() if cond else if_false()


def at_least(low: float, x: Any) -> Any:
    """``max(low, x)``; a tensor ``x`` while torch.compile traces is clamped instead."""
    if isinstance(x, torch.Tensor) and torch.compiler.is_compiling():
        return x.clamp_min(low)
    return max(low, x)


def taken(cond: Any) -> bool:
    """A rule's branch on a hyperparameter: ``if taken(weight_decay != 0)``.

    On the exact path, ``cond`` itself. While torch.compile traces, a tensor ``cond`` counts as
    taken: ``compile=True`` passes such a hyperparameter (``weight_decay``, ``momentum``) as a
    tensor only when it is positive, and as the number otherwise -- the branch is decided
    when the graph is made, and a changing positive value does not recompile. (A tensor
    ``weight_decay`` of the user's that holds 0 then adds ``0 * param``: the same numbers.)
    """
    if isinstance(cond, torch.Tensor) and torch.compiler.is_compiling():
        return True
    return cond


def add_scaled(x: torch.Tensor, y: torch.Tensor, alpha: Any) -> torch.Tensor:
    """``x.add(y, alpha=alpha)``; while torch.compile traces with a tensor ``alpha``,
    ``x + y * alpha`` -- dynamo (torch 2.13) would bake a tensor ``alpha`` of the out-of-place
    ``add`` into the graph as a constant, silently ignoring later values."""
    if isinstance(alpha, torch.Tensor) and torch.compiler.is_compiling():
        return x + y * alpha
    return x.add(y, alpha=alpha)

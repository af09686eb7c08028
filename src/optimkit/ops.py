"""The tensor operations update rules are written in, beyond torch's own.

Two concerns, both about running *one* rule in every execution mode:

* complex parameters are viewed as real pairs (``as_real``), and ``differentiable=True`` steps
  avoid in-place updates of tensors autograd saved (``differentiating``);
* under ``compile=True`` (:mod:`optimkit.execution.compiled`) the scalar math of a rule must stay
  in the graph: ``item``, ``select``, ``at_least``, ``taken`` and ``add_scaled`` do exactly what
  the plain Python does on the exact path, and keep 0-d tensors while torch.compile traces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["as_real", "to_scalar", "differentiating", "item", "select", "at_least", "taken", "add_scaled"]


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
# see :mod:`optimkit.execution.compiled`) ``.item()`` would end the graph, and a branch on its value would
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

"""RMSprop (Hinton's lecture notes; the centered variant from Graves 2013)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    add_scaled,
    as_real,
    check_compile,
    check_lr,
    check_nonneg,
    differentiating,
    taken,
    to_scalar,
)
from ..optimizer import Optimizer, _step_tensor

__all__ = ["RMSprop", "rmsprop_"]


def rmsprop_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool,
) -> None:
    r"""One RMSprop step on ``param`` (in place).

    .. math::
        g &\leftarrow \pm\nabla f(\theta) + \lambda\theta \\
        v &\leftarrow \alpha v + (1-\alpha) g^2, \quad \tilde v \leftarrow v \\
        \bar g &\leftarrow \alpha \bar g + (1-\alpha) g, \quad
            \tilde v \leftarrow v - \bar g^2 \text{ (centered)} \\
        b &\leftarrow \mu b + g / (\sqrt{\tilde v} + \epsilon), \quad
            \theta \leftarrow \theta - \gamma b \text{ (momentum)} \\
        \theta &\leftarrow \theta - \gamma\, g / (\sqrt{\tilde v} + \epsilon) \text{ (otherwise)}

    State: ``step``, ``square_avg`` (v), ``momentum_buffer`` (b, momentum > 0),
    ``grad_avg`` (:math:`\bar g`, centered).
    """
    if maximize:
        grad = -grad
    state["step"] += 1
    if taken(weight_decay != 0):
        grad = add_scaled(grad, param, weight_decay)
    param, grad, square_avg = as_real(param, grad, state["square_avg"])

    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if centered:
        (grad_avg,) = as_real(state["grad_avg"])
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    # sqrt saved its output for backward: a differentiable step must not overwrite it.
    avg = avg.add(eps) if differentiating() else avg.add_(eps)

    if taken(momentum > 0):
        (buf,) = as_real(state["momentum_buffer"])
        buf.mul_(momentum).addcdiv_(grad, avg)
        param.add_(buf, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


class RMSprop(Optimizer):
    r"""RMSprop, exactly as ``torch.optim.RMSprop``.

    Hinton, *Neural Networks for Machine Learning*, lecture 6e; the centered variant is
    from Graves, *Generating Sequences With Recurrent Neural Networks* (2013). The square
    root is taken before adding :math:`\epsilon` (TensorFlow does the opposite).

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-2).
        alpha (float): smoothing constant :math:`\alpha` (default: 0.99).
        eps (float): :math:`\epsilon` added to the denominator (default: 1e-8).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        momentum (float): momentum factor :math:`\mu` (default: 0).
        centered (bool): normalize by an estimate of the gradient's variance.
        maximize (bool): maximize the objective.
        capturable, foreach, differentiable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0),
    ``grad_avg`` (centered).
    """

    _param_shaped_state = ("square_avg", "momentum_buffer", "grad_avg")
    _elementwise = True
    _sparse_error = "RMSprop does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps, "epsilon value")
        check_nonneg(momentum, "momentum value")
        check_nonneg(weight_decay, "weight_decay value")
        check_nonneg(alpha, "alpha value")
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable,
        )  # fmt: skip
        self._compile = check_compile(compile, None, differentiable)
        super().__init__(params, defaults)

    _rule = staticmethod(rmsprop_)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {
            "step": _step_tensor(p, group),
            "square_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        }
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(
            lr=to_scalar(group["lr"]), alpha=group["alpha"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum=group["momentum"],
            centered=group["centered"], maximize=group["maximize"],
        )  # fmt: skip

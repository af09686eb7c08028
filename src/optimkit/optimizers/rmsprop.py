"""RMSprop (Hinton's lecture notes; the centered variant from Graves 2013)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, taken
from ..optimizer import Optimizer
from ..rule import moment, rule, step, when
from ..transforms import decay_weights
from ._checks import check_lr, check_nonneg

__all__ = ["RMSprop", "rmsprop_"]


@rule(
    state={
        "step": step, "square_avg": moment(nonnegative=True),
        "momentum_buffer": when(lambda p, group: group["momentum"] > 0, moment()),
        "grad_avg": when("centered", moment()),
    },
    elementwise=True,
)  # fmt: skip
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
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay)
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

    rule = rmsprop_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 1e-3}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"centered": True}, {"momentum": 0.9}, {"alpha": 0.9, "eps": 1e-6},
        {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
        {"momentum": 0.5, "lr": torch.tensor(0.02), "centered": True},
    )  # fmt: skip

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
        super().__init__(params, defaults, compile=compile)

"""Adadelta (Zeiler 2012)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating
from ..optimizer import Optimizer
from ..rule import moment, rule, step
from ..transforms import decay_weights
from ._checks import check_lr, check_nonneg

__all__ = ["Adadelta", "adadelta_"]


@rule(state={"step": step, "square_avg": moment(nonnegative=True), "acc_delta": moment(nonnegative=True)}, elementwise=True)
def adadelta_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adadelta step on ``param`` (in place).

    .. math::
        g &\leftarrow \pm\nabla f(\theta) + \lambda\theta \\
        v &\leftarrow \rho v + (1-\rho) g^2 \\
        \Delta &\leftarrow g\,\sqrt{u + \epsilon} / \sqrt{v + \epsilon} \\
        u &\leftarrow \rho u + (1-\rho) \Delta^2 \\
        \theta &\leftarrow \theta - \gamma \Delta

    State: ``step``, ``square_avg`` (v), ``acc_delta`` (u).
    """
    state["step"] += 1
    if maximize:
        grad = -grad
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay)
    square_avg, acc_delta, grad = as_real(state["square_avg"], state["acc_delta"], grad)

    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_()
    if differentiating():
        delta = delta.clone()  # sqrt saved its output for backward
    delta.div_(std).mul_(grad)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)

    # torch adds the delta as a complex tensor to the complex parameter (not real views).
    if param.is_complex():
        delta = torch.view_as_complex(delta)
    param.add_(delta, alpha=-lr)


class Adadelta(Optimizer):
    r"""Adadelta, exactly as ``torch.optim.Adadelta``.

    Zeiler, *ADADELTA: An Adaptive Learning Rate Method* (2012), arXiv:1212.5701.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): coefficient :math:`\gamma` scaling the delta (default: 1.0).
        rho (float): decay :math:`\rho` of the running averages (default: 0.9).
        eps (float): :math:`\epsilon` inside the square roots (default: 1e-6).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        maximize (bool): maximize the objective.
        foreach, capturable, differentiable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``square_avg``, ``acc_delta``.
    """

    rule = adadelta_
    lab_lr = 1.0
    configs = (
        {}, {"lr": 0.1}, {"lr": torch.tensor(0.5)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"rho": 0.95, "eps": 1e-4}, {"rho": 0.5, "weight_decay": 0.9, "lr": torch.tensor(0.1), "maximize": True},
    )  # fmt: skip

    _capturable_xla = False
    _sparse_error = "Adadelta does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonneg(eps, "epsilon value")
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

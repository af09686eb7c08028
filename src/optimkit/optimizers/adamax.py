"""Adamax: Adam with the infinity norm (Kingma & Ba 2015, section 7)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, item
from ..optimizer import Optimizer
from ..rule import moment, rule, step
from ..transforms import decay_weights
from ._checks import check_betas, check_lr, check_nonneg

__all__ = ["Adamax", "adamax_"]


@rule(state={"step": step, "exp_avg": moment(), "exp_inf": moment(nonnegative=True)}, elementwise=True)
def adamax_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adamax step on ``param`` (in place).

    .. math::
        t &\leftarrow t + 1, \quad g \leftarrow \pm\nabla f(\theta) + \lambda\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        u &\leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\, \frac{m}{u}

    State: ``step``, ``exp_avg`` (m), ``exp_inf`` (u).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    step_t = state["step"]
    step_t += 1
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay)
    param, grad, exp_avg, exp_inf = as_real(param, grad, state["exp_avg"], state["exp_inf"])

    exp_avg.lerp_(grad, 1 - beta1)
    if differentiating():
        # maximum(out=) cannot be differentiated; torch takes the same maximum with amax.
        norm_buf = torch.cat([exp_inf.mul_(beta2).unsqueeze(0), grad.abs().add_(eps).unsqueeze_(0)], 0)
        exp_inf.copy_(torch.amax(norm_buf, 0, keepdim=False))
    else:
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)

    step = item(step_t)
    clr = lr / (1 - beta1**step)
    param.addcdiv_(exp_avg, exp_inf, value=-clr)


class Adamax(Optimizer):
    r"""Adamax, exactly as ``torch.optim.Adamax``.

    Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015), section 7.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 2e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` added to :math:`|g|` (default: 1e-8).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        maximize (bool): maximize the objective.
        foreach, differentiable, capturable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``exp_avg``, ``exp_inf``.
    """

    rule = adamax_
    lab_lr = 0.02
    configs = (
        {}, {"lr": 0.1}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"betas": (0.8, 0.9), "eps": 1e-6}, {"betas": (0.5, 0.6), "eps": 0.5, "lr": torch.tensor(0.05)},
    )  # fmt: skip

    _sparse_error = "Adamax does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps, "epsilon value")
        check_betas(betas)
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

"""RAdam: Adam with a rectified adaptive learning rate (Liu et al. 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, item, select
from ..optimizer import Optimizer
from ..rule import moment, rule, step
from ..transforms import decay_weights
from ._checks import check_betas, check_lr, check_nonneg

__all__ = ["RAdam", "radam_"]


@rule(state={"step": step, "exp_avg": moment(), "exp_avg_sq": moment(nonnegative=True)}, elementwise=True)
def radam_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    r"""One RAdam step on ``param`` (in place).

    .. math::
        t &\leftarrow t + 1 \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) \text{ (decoupled) or }
            g \leftarrow g + \lambda\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
            \quad \hat m = m / (1-\beta_1^t) \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \quad
            \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t} \\
        \theta &\leftarrow \theta - \gamma\, \hat m\, \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}\,
            \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
            \text{ if } \rho_t > 5, \text{ else } \theta - \gamma \hat m

    State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    param, grad, exp_avg, exp_avg_sq = as_real(param, grad, state["exp_avg"], state["exp_avg_sq"])
    step_t = state["step"]
    step_t += 1
    step = item(step_t)

    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)

    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    bias_corrected_exp_avg = exp_avg / bias_correction1

    # the maximum length of the approximated SMA, and its length at step t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2

    def rectified() -> Tensor:
        # The variance is tractable: adaptive step, rectified. torch's operand order.
        exp_avg_sq_sqrt = exp_avg_sq.sqrt()
        # sqrt saved its output for backward: a differentiable step must not overwrite it.
        exp_avg_sq_sqrt = exp_avg_sq_sqrt.add(eps) if differentiating() else exp_avg_sq_sqrt.add_(eps)
        adaptive_lr = (bias_correction2**0.5) / exp_avg_sq_sqrt
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        return bias_corrected_exp_avg * lr * adaptive_lr * rect

    # Rectified while the variance is tractable (rho_t > 5); before, momentum SGD.
    param.add_(select(rho_t > 5.0, rectified, lambda: bias_corrected_exp_avg * lr), alpha=-1.0)


class RAdam(Optimizer):
    r"""RAdam, exactly as ``torch.optim.RAdam``.

    Liu et al., *On the Variance of the Adaptive Learning Rate and Beyond* (ICLR 2020).
    ``decoupled_weight_decay=True`` decays the weights directly as in AdamW (RAdamW).

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` added to the denominator (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        decoupled_weight_decay (bool): decay the weights directly (default: False).
        maximize (bool): maximize the objective.
        foreach, capturable, differentiable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    rule = radam_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 2e-3}, {"lr": torch.tensor(0.01)}, {"eps": 1e-6}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "lr": torch.tensor(0.02), "maximize": True},
        {"betas": (0.8, 0.9), "lr": 0.05},
    )  # fmt: skip

    _sparse_error = "RAdam does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps, "epsilon value")
        check_betas(betas)
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
            foreach=foreach, capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
            differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

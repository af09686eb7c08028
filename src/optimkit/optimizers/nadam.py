"""NAdam: Adam with Nesterov momentum (Dozat 2016), optionally with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, item
from ..optimizer import Optimizer
from ..rule import moment, rule, scalar, step, step_tensor
from ..transforms import decay_weights
from ._checks import check_betas, check_lr, check_nonneg

__all__ = ["NAdam", "nadam_"]


# ``mu_product`` (the product of the momentum schedule) is scalar state: on load it keeps its saved
# dtype -- torch casts it to a float64 parameter's dtype, so a resumed torch run drifts from an
# uninterrupted one; optimkit's resumes exactly.
@rule(
    state={
        "step": step, "mu_product": scalar(lambda p, group: step_tensor(p, group, 1.0)),
        "exp_avg": moment(), "exp_avg_sq": moment(nonnegative=True),
    },
    elementwise=True,
)  # fmt: skip
def nadam_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    r"""One NAdam step on ``param`` (in place).

    .. math::
        t &\leftarrow t + 1 \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) \text{ (decoupled) or }
            g \leftarrow g + \lambda\theta \\
        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t\psi}), \quad
            \mu_{t+1} = \beta_1 (1 - \tfrac12\, 0.96^{(t+1)\psi}), \quad
            \Pi \leftarrow \Pi\,\mu_t \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        d &= \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        \theta &\leftarrow \theta - \gamma \frac{1-\mu_t}{1-\Pi} \frac{g}{d}
            - \gamma \frac{\mu_{t+1}}{1-\Pi\mu_{t+1}} \frac{m}{d}

    State: ``step``, ``mu_product`` (:math:`\Pi`, a scalar tensor), ``exp_avg`` (m),
    ``exp_avg_sq`` (v). :math:`\psi` is ``momentum_decay``.
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    # NAdam views complex tensors as real *before* the weight decay (Adam does it after).
    param, grad, exp_avg, exp_avg_sq = as_real(param, grad, state["exp_avg"], state["exp_avg_sq"])
    mu_product = state["mu_product"]
    step_t = state["step"]
    step_t += 1
    step = item(step_t)

    bias_correction2 = 1 - beta2**step
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)

    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    mu_product *= mu  # in place: the product is state, in its own (scalar) dtype

    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt()

    mu_product_value = item(mu_product)
    mu_product_next = mu_product_value * mu_next
    # sqrt saved its output for backward: a differentiable step must not overwrite it.
    denom = denom.add(eps) if differentiating() else denom.add_(eps)
    param.addcdiv_(grad, denom, value=(-lr * (1.0 - mu) / (1.0 - mu_product_value)))
    # addcdiv saves exp_avg for backward and the next step updates it in place; torch's
    # differentiable NAdam multiplies out of place, so unrolled steps differentiate there too.
    exp_avg = exp_avg.clone() if differentiating() else exp_avg
    param.addcdiv_(exp_avg, denom, value=(-lr * mu_next) / (1.0 - mu_product_next))


class NAdam(Optimizer):
    r"""NAdam, exactly as ``torch.optim.NAdam``.

    Dozat, *Incorporating Nesterov Momentum into Adam* (ICLR 2016 workshop); the momentum
    schedule :math:`\mu_t` is the paper's. ``decoupled_weight_decay=True`` decays the weights
    directly as in AdamW (Loshchilov & Hutter 2019), sometimes called NAdamW.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 2e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` added to the denominator (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        momentum_decay (float): :math:`\psi` of the momentum schedule (default: 4e-3).
        decoupled_weight_decay (bool): decay the weights directly (default: False).
        maximize (bool): maximize the objective.
        foreach, capturable, differentiable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``mu_product`` (scalar tensors, on the CPU),
    ``exp_avg``, ``exp_avg_sq``.
    """

    rule = nadam_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 1e-3}, {"lr": torch.tensor(0.01)}, {"momentum_decay": 6e-3}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "momentum_decay": 6e-3, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "lr": torch.tensor(0.01), "maximize": True},
        {"weight_decay": 0.1, "maximize": True}, {"betas": (0.8, 0.9), "eps": 1e-6, "momentum_decay": 0.5},
    )  # fmt: skip

    _capturable_tensors = "params, mu_products and state_steps"
    # torch casts mu_product to a float64 parameter's dtype on load, so a resumed torch run
    # drifts from an uninterrupted one; keeping the saved dtype resumes exactly.
    _sparse_error = "NAdam does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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
        check_nonneg(momentum_decay, "momentum_decay value")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

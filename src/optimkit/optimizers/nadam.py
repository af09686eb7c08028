"""NAdam: Adam with Nesterov momentum (Dozat 2016), optionally with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    add_scaled,
    as_real,
    check_betas,
    check_compile,
    check_lr,
    check_nonneg,
    differentiating,
    item,
    taken,
    to_scalar,
)
from ..optimizer import Optimizer, _scalar_dtype, _step_tensor

__all__ = ["NAdam", "nadam_"]


def nadam_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
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
    if maximize:
        grad = -grad
    # NAdam views complex tensors as real *before* the weight decay (Adam does it after).
    param, grad, exp_avg, exp_avg_sq = as_real(param, grad, state["exp_avg"], state["exp_avg_sq"])
    mu_product = state["mu_product"]
    step_t = state["step"]
    step_t += 1
    step = item(step_t)

    bias_correction2 = 1 - beta2**step
    if taken(weight_decay != 0):
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = add_scaled(grad, param, weight_decay)

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

    _param_shaped_state = ("exp_avg", "exp_avg_sq")
    _elementwise = True
    _capturable_tensors = "params, mu_products and state_steps"
    # torch casts mu_product to a float64 parameter's dtype on load, so a resumed torch run
    # drifts from an uninterrupted one; keeping the saved dtype resumes exactly.
    _scalar_state = ("step", "mu_product")
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
        self._compile = check_compile(compile, None, differentiable)
        super().__init__(params, defaults)

    _rule = staticmethod(nadam_)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": _step_tensor(p, group),
            "mu_product": _step_tensor(p, group, 1.0),  # same dtype and device as the step
            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
        }

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            lr=to_scalar(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
            decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"],
        )  # fmt: skip

    def _cast_state(self, param: Tensor, value: Any, group: dict[str, Any], key: Any = None) -> Any:
        # Old state dicts stored mu_product as a number; torch converts it to a scalar tensor.
        if key == "mu_product" and isinstance(value, (int, float)) and not isinstance(value, bool):
            device = param.device if group.get("capturable") else "cpu"
            return torch.tensor(float(value), dtype=_scalar_dtype(), device=device)
        return super()._cast_state(param, value, group, key)

"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky 1992)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, at_least, item, select, to_scalar
from ..optimizer import Optimizer
from ..rule import rule, scalar, scalar_dtype, zeros
from ..transforms import decay_weights
from ._checks import check_lr, check_nonneg

__all__ = ["ASGD", "asgd_"]


# torch keeps ASGD's scalars on the parameter's device, in the default scalar dtype. No chunks for
# big tensors: one small temporary, measured faster whole (38 vs 49 ms on GPT-2 shapes).
@rule(
    state={
        "step": scalar(lambda p, group: torch.zeros((), device=p.device, dtype=scalar_dtype())),
        "eta": scalar(lambda p, group: torch.tensor(float(to_scalar(group["lr"])), device=p.device, dtype=scalar_dtype())),
        "mu": scalar(lambda p, group: torch.ones((), device=p.device, dtype=scalar_dtype())),
        "ax": zeros,
    },
    elementwise=True, chunk_big=False,
)  # fmt: skip
def asgd_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One ASGD step on ``param`` (in place).

    .. math::
        t &\leftarrow t + 1, \quad g \leftarrow \pm\nabla f(\theta) + \lambda_{wd}\theta \\
        \theta &\leftarrow \theta(1 - \lambda\eta) - \eta g \\
        \bar\theta &\leftarrow \bar\theta + \mu(\theta - \bar\theta)
            \text{ (just } \theta \text{ while } \mu = 1) \\
        \eta &\leftarrow \gamma / (1 + \lambda\gamma t)^\alpha, \quad
            \mu \leftarrow 1 / \max(1, t - t_0)

    State: ``step``, ``eta`` (:math:`\eta`), ``mu`` (:math:`\mu`) -- scalar tensors -- and
    ``ax`` (the average :math:`\bar\theta`).
    """
    if maximize:
        grad = -grad
    mu, eta = state["mu"], state["eta"]
    # ASGD views complex tensors as real *before* the weight decay (Adam does it after).
    grad, param, ax = as_real(grad, param, state["ax"])
    step_t = state["step"]
    step_t += 1
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay)

    eta_value = item(eta)
    param.mul_(1 - lambd * eta_value)  # decay term
    param.add_(grad, alpha=-eta_value)

    ax.copy_(select(item(mu) != 1, lambda: ax.add(param.sub(ax).mul_(mu)), lambda: param))

    # The new eta and mu go through a tensor of the computed (Python or lr tensor) precision
    # and are then rounded into the state's dtype, as in torch.
    step = item(step_t)
    eta.copy_(torch.as_tensor(lr / ((1 + lambd * lr * step) ** alpha)))
    mu.copy_(torch.as_tensor(1 / at_least(1, step - t0)))


class ASGD(Optimizer):
    r"""ASGD, exactly as ``torch.optim.ASGD``.

    Polyak & Juditsky, *Acceleration of Stochastic Approximation by Averaging* (SIAM J.
    Control Optim. 1992). The average of the iterates is kept in the state as ``ax``; the
    parameters themselves follow plain (decayed) SGD.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-2).
        lambd (float): decay term :math:`\lambda` (default: 1e-4).
        alpha (float): power :math:`\alpha` of the eta update (default: 0.75).
        t0 (float): step at which averaging starts (default: 1e6).
        weight_decay (float): L2 penalty (default: 0).
        maximize (bool): maximize the objective.
        foreach, differentiable, capturable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``eta``, ``mu`` (scalar tensors on the parameter's
    device, in the default scalar dtype) and ``ax``.
    """

    rule = asgd_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 0.02}, {"lr": torch.tensor(0.01)}, {"lambd": 0.1}, {"t0": 2},
        {"alpha": 0.5, "lambd": 0.01, "lr": 0.05}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True}, {"t0": 1, "lr": torch.tensor(0.02), "lambd": 0.5, "maximize": True},
    )  # fmt: skip

    _capturable_tensors = "params, mus, etas, and state_steps"
    # torch casts eta and mu to a float64 parameter's dtype on load, so a resumed torch run
    # drifts from an uninterrupted one; keeping the saved dtype resumes exactly.
    _sparse_error = "ASGD does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(
            lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

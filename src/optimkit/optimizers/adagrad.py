"""Adagrad (Duchi, Hazan & Singer 2011), with sparse-gradient support."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import add_scaled, as_real, differentiating, item, taken
from ..optimizer import Optimizer
from ..rule import full, moment, rule, step
from ._checks import check_impl_flags, check_lr, check_nonneg

__all__ = ["Adagrad", "adagrad_"]


def _initial_sum(p: Tensor, group: dict[str, Any]) -> Any:
    init = group["initial_accumulator_value"]
    return complex(init, init) if p.is_complex() else init


@rule(state={"step": step, "sum": moment(full(_initial_sum), nonnegative=True)}, elementwise=True, sparse="yes", fused="adagrad")
def adagrad_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    r"""One Adagrad step on ``param`` (in place); ``grad`` may be sparse.

    .. math::
        t &\leftarrow t + 1, \quad \tilde\gamma = \gamma / (1 + (t-1)\eta) \\
        g &\leftarrow \pm\nabla f(\theta) + \lambda\theta \\
        s &\leftarrow s + g^2 \\
        \theta &\leftarrow \theta - \tilde\gamma\, g / (\sqrt{s} + \epsilon)

    State: ``step``, ``sum`` (s). With a sparse gradient only the rows it touches change.
    """
    step_t = state["step"]
    step_t += 1
    step = item(step_t)
    if maximize:
        grad = -grad
    if taken(weight_decay != 0):
        if grad.is_sparse:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        grad = add_scaled(grad, param, weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state["sum"]
    if grad.is_sparse:
        grad = grad.coalesce()
        indices, values = grad._indices(), grad._values()
        state_sum.add_(torch.sparse_coo_tensor(indices, values.pow(2), grad.size()))
        std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
        param.add_(torch.sparse_coo_tensor(indices, values / std_values, grad.size()), alpha=-clr)
    else:
        param, grad, state_sum = as_real(param, grad, state_sum)
        state_sum.addcmul_(grad, grad, value=1)
        std = state_sum.sqrt()
        std = std + eps if differentiating() else std.add_(eps)
        param.addcdiv_(grad, std, value=-clr)


class Adagrad(Optimizer):
    r"""Adagrad, exactly as ``torch.optim.Adagrad`` (sparse gradients included).

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-2).
        lr_decay (float): :math:`\eta` (default: 0).
        weight_decay (float): :math:`\lambda` (default: 0).
        initial_accumulator_value (float): starting value of ``sum`` (default: 0).
        eps (float): :math:`\epsilon` (default: 1e-10).
        maximize (bool): maximize the objective.
        foreach, differentiable, fused, compile: see the README's "Implementation flags".

    State per parameter (created at construction, as in torch): ``step``, ``sum``.
    """

    rule = adagrad_
    lab_lr = 0.1
    configs = (
        {}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True}, {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1}, {"lr": torch.tensor(0.01)}, {"eps": 1e-3},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(lr_decay, "lr_decay value")
        check_nonneg(weight_decay, "weight_decay value")
        check_nonneg(initial_accumulator_value, "initial_accumulator_value value")
        check_nonneg(eps, "epsilon value")
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)
        check_impl_flags(foreach, fused, differentiable)
        # torch creates Adagrad's state eagerly for the parameters given at construction, from
        # the constructor's initial value for every group (groups added later get theirs at
        # their first step, from the group's value).
        eager = {"initial_accumulator_value": initial_accumulator_value}
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = self.rule.init_state(p, {**group, **eager})

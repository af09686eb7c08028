"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import add_scaled, taken
from ..optimizer import Optimizer
from ..rule import Rule, created, moment, rule
from ..transforms import caution, cautious_rule
from ._checks import check_cautious, check_impl_flags, check_lr, check_nonneg

__all__ = ["SGD", "sgd_"]


# No chunks for big tensors: SGD makes no temporaries to keep in cache, chunks would only add
# calls (measured on GPT-2 shapes: 15 ms whole vs 19 ms chunked).
@rule(state={"momentum_buffer": moment(created)}, elementwise=True, sparse="yes", fused="sgd", chunk_big=False)
def sgd_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    momentum: float,
    dampening: float,
    weight_decay: float | Tensor,
    nesterov: bool,
    maximize: bool,
    cautious: bool = False,
) -> None:
    r"""One SGD step on ``param`` (in place).

    .. math::
        g &\leftarrow \pm\nabla f(\theta) + \lambda\theta \\
        b &\leftarrow g \text{ at the first step, else } \mu b + (1-\tau) g \\
        g &\leftarrow g + \mu b \text{ (Nesterov) or } b \\
        \theta &\leftarrow \theta - \gamma g

    With ``cautious`` (and momentum), the last :math:`g` is masked where it disagrees in sign
    with the gradient (:func:`~optimkit.transforms.caution`, timm's ``caution=True``).

    State: ``momentum_buffer`` (created from the first gradient, only when ``momentum != 0``).
    """
    if maximize:
        grad = -grad
    if taken(weight_decay != 0):
        if isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
            grad = grad.addcmul_(param.clone(), weight_decay)
        else:
            grad = add_scaled(grad, param, weight_decay)
    if taken(momentum != 0):
        buf = state.get("momentum_buffer")
        if buf is None:
            # torch's convention: the buffer starts as the gradient, undampened.
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        update = add_scaled(grad, buf, momentum) if nesterov else buf
        grad = caution(update, grad) if cautious else update
    if isinstance(lr, Tensor) and lr.requires_grad:
        param.addcmul_(grad, lr, value=-1)
    else:
        param.add_(grad, alpha=-lr)


class SGD(Optimizer):
    r"""Stochastic gradient descent (optionally with momentum), exactly as ``torch.optim.SGD``.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        momentum (float): momentum factor :math:`\mu` (default: 0).
        dampening (float): dampening :math:`\tau` for momentum (default: 0).
        weight_decay (float): L2 penalty :math:`\lambda` (default: 0).
        nesterov (bool): Nesterov momentum, Sutskever et al. 2013 (default: False).
        maximize (bool): maximize the objective (default: False).
        cautious (bool): the cautious mask (Liang et al. 2024) on the momentum update, as
            timm 1.0.31's SGDW ``caution=True``; only with momentum (without, as in timm, it
            changes nothing). Not torch's: see :class:`optimkit.Adam`'s ``cautious``; dense
            gradients only.
        foreach, differentiable, fused, compile: see the README's "Implementation flags".

    State per parameter: ``momentum_buffer`` (only with momentum).
    """

    rule = sgd_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 0.01}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.5}, {"momentum": 0.9},
        {"weight_decay": 0.1, "maximize": True}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"momentum": 0.9, "maximize": True, "lr": 0.05},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        cautious: bool = False,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(momentum, "momentum value")
        check_nonneg(weight_decay, "weight_decay value")
        check_cautious(cautious, fused=fused, compile=compile)
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused, **({"cautious": True} if cautious else {}),
        )  # fmt: skip
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_impl_flags(foreach, fused, differentiable)
        super().__init__(params, defaults, compile=compile)

    def _rule_for(self, group: dict[str, Any]) -> Rule:
        return cautious_rule(self.rule, group)

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        if group.get("cautious") and any(p.grad.is_sparse for p in params):
            raise RuntimeError("SGD with cautious=True does not support sparse gradients")

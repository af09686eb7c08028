"""Rprop: resilient backpropagation (Riedmiller & Braun 1993)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, to_scalar
from ..optimizer import Optimizer
from ..rule import like, rule, step, zeros
from ._checks import check_lr

__all__ = ["Rprop", "rprop_"]


def _initial_step_size(p: Tensor, group: dict[str, Any]) -> Tensor:
    # torch shapes it after the gradient; the learning rate only sets this initial value.
    lr = group["lr"]
    return torch.full_like(p.grad if p.grad is not None else p, complex(lr, lr) if p.is_complex() else to_scalar(lr))


@rule(state={"step": step, "prev": zeros, "step_size": like(_initial_step_size)}, elementwise=True)
def rprop_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    etas: tuple[float, float],
    step_sizes: tuple[float, float],
    maximize: bool,
) -> None:
    r"""One Rprop step on ``param`` (in place). Only the gradient's sign is used.

    .. math::
        s &= \operatorname{sign}(g\, g_{prev}) \\
        \eta &\leftarrow \operatorname{clamp}(\eta \cdot
            \{\eta_+ \text{ if } s>0;\ \eta_- \text{ if } s<0;\ 1 \text{ if } s=0\},
            \Gamma_{min}, \Gamma_{max}) \\
        g &\leftarrow 0 \text{ where } s < 0 \\
        \theta &\leftarrow \theta - \eta\, \operatorname{sign}(g), \quad g_{prev} \leftarrow g

    State: ``step``, ``prev`` (:math:`g_{prev}`), ``step_size`` (:math:`\eta`, per element).
    The learning rate only sets the initial ``step_size``.
    """
    (etaminus, etaplus), (step_size_min, step_size_max) = etas, step_sizes
    if maximize:
        grad = -grad
    state["step"] += 1
    grad, prev, param, step_size = as_real(grad, state["prev"], param, state["step_size"])

    # mul saves prev for backward, and prev is overwritten below.
    sign = grad.mul(prev.clone() if differentiating() else prev).sign()
    sign[sign.gt(0)] = etaplus
    sign[sign.lt(0)] = etaminus
    sign[sign.eq(0)] = 1

    step_size.mul_(sign).clamp_(step_size_min, step_size_max)

    # Where the gradient changed sign, skip this step and forget the gradient, so the next
    # step neither grows nor shrinks the step size there.
    grad = grad.clone(memory_format=torch.preserve_format)
    grad[sign.eq(etaminus)] = 0

    param.addcmul_(grad.sign(), step_size, value=-1)
    prev.copy_(grad)


class Rprop(Optimizer):
    r"""Rprop, exactly as ``torch.optim.Rprop``.

    Riedmiller & Braun, *A Direct Adaptive Method for Faster Backpropagation Learning: The
    RPROP Algorithm* (IEEE ICNN 1993). Complex parameters are treated as pairs of
    independent real numbers (the imaginary parts get their own step sizes).

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): the initial step size (default: 1e-2).
        etas (tuple of floats): :math:`(\eta_-, \eta_+)`, the factors by which a step size
            shrinks and grows (default: (0.5, 1.2)).
        step_sizes (tuple of floats): :math:`(\Gamma_{min}, \Gamma_{max})`, the bounds of
            the step sizes (default: (1e-6, 50)).
        maximize (bool): maximize the objective.
        capturable, foreach, differentiable, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``prev``, ``step_size``.
    """

    rule = rprop_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 2e-4}, {"lr": torch.tensor(0.01)}, {"etas": (0.3, 1.5)}, {"step_sizes": (2e-6, 100)},
        {"step_sizes": (5e-3, 2e-2)}, {"maximize": True},
        {"lr": torch.tensor(0.05), "etas": (0.4, 1.1), "step_sizes": (1e-3, 0.1), "maximize": True},
    )  # fmt: skip

    _sparse_error = "Rprop does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = dict(
            lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
            differentiable=differentiable, capturable=capturable,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)

"""ADOPT: Adam that normalizes the gradient by the *previous* second moment (Taniguchi et al. 2024)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..ops import add_scaled, as_real, item, select, taken
from ..optimizer import Optimizer
from ..rule import moment, rule, step
from ._checks import check_lr, check_nonneg

__all__ = ["ADOPT", "adopt_", "quarter_power"]


def quarter_power(step: Any) -> Any:
    r"""ADOPT's default clipping bound :math:`c_t = t^{1/4}` (the authors' ``lambda step: step**0.25``)."""
    return step**0.25


def _weight(w: Any, like: Tensor) -> Any:
    """A tensor interpolation weight in ``like``'s dtype (``lerp_`` takes no other)."""
    return w.to(like.dtype) if isinstance(w, Tensor) else w


@rule(state={"step": step, "exp_avg": moment(), "exp_avg_sq": moment(nonnegative=True)}, elementwise=True)
def adopt_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decouple: bool,
    maximize: bool,
    clip_lambda: Callable[[Any], Any] | None,
) -> None:
    r"""One ADOPT step on ``param`` (in place), as torch-adopt's for-loop implementation.

    With :math:`t` the steps taken before this one:

    .. math::
        g &\leftarrow \pm\nabla f(\theta) + \lambda\theta \text{ (coupled decay)} \\
        v &\leftarrow g^2 \text{ and nothing else, if } t = 0; \text{ otherwise:} \\
        \theta &\leftarrow \theta - \gamma\lambda\theta \text{ (decoupled decay)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\,
            \operatorname{clip}\!\Big(\frac{g}{\max(\sqrt v, \epsilon)}, -c_t, c_t\Big),
            \quad c_t = \texttt{clip\_lambda}(t) \\
        \theta &\leftarrow \theta - \gamma m, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2

    The gradient is normalized by the second moment *before* it is updated with this gradient
    -- the change that lets ADOPT converge for any :math:`\beta_2`. State: ``step`` (a scalar
    tensor, the steps taken), ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    step_t = state["step"]
    step = item(step_t)  # the steps taken before this one
    if taken(weight_decay != 0) and not decouple:
        grad = add_scaled(grad, param, weight_decay)
    param, grad, exp_avg, exp_avg_sq = as_real(param, grad, state["exp_avg"], state["exp_avg_sq"])

    first = step == 0
    if not isinstance(first, Tensor) and first:
        # The first step only initializes the second moment.
        exp_avg_sq.addcmul_(grad, grad)
        step_t += 1
        return
    # Under torch.compile ``first`` is a 0-d tensor and the first step is folded into this one
    # graph: nothing moves (rate 0, the momentum keeps its zeros) and v takes g^2 (decay 1).
    rate = select(first, lambda: lr * 0.0, lambda: lr)
    weight1 = select(first, lambda: beta1 * 0.0, lambda: 1 - beta1)
    decay2 = select(first, lambda: beta2 * 0.0 + 1.0, lambda: beta2)
    weight2 = select(first, lambda: beta2 * 0.0 + 1.0, lambda: 1 - beta2)

    if taken(weight_decay != 0) and decouple:
        param.add_(param, alpha=-rate * weight_decay)
    denom = torch.clamp(exp_avg_sq.sqrt(), eps)
    normed_grad = grad.div(denom)
    if clip_lambda is not None:
        clip = clip_lambda(step)
        normed_grad.clamp_(-clip, clip)
    exp_avg.lerp_(normed_grad, _weight(weight1, exp_avg))
    param.add_(exp_avg, alpha=-rate)
    exp_avg_sq.mul_(decay2).addcmul_(grad, grad, value=weight2)
    step_t += 1


class ADOPT(Optimizer):
    r"""ADOPT: Taniguchi et al., *ADOPT: Modified Adam Can Converge with Any* :math:`\beta_2`
    *with the Optimal Rate* (NeurIPS 2024), exactly as the authors' ``adopt.ADOPT``
    (torch-adopt 0.1.0) with ``foreach=False``, bit for bit in every dtype.

    The gradient is normalized by the square root of the second moment of the *previous*
    steps, clipped to :math:`\pm c_t` (``clip_lambda``), and only then averaged into the
    momentum; the first step only initializes the second moment.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.9999)).
        eps (float): floor :math:`\epsilon` of :math:`\sqrt v` (default: 1e-6).
        clip_lambda (callable or None): :math:`c_t` as a function of the steps taken
            :math:`t` (a float; under ``compile=True`` a 0-d tensor); None: no clipping
            (default: :func:`quarter_power`, :math:`t^{1/4}`, the authors' default). As in the
            authors' class it belongs to the optimizer (``opt.clip_lambda``), not to the
            parameter groups, so state dicts stay plain data; it is pickled with the optimizer.
        weight_decay (float): :math:`\lambda` (default: 0).
        decouple (bool): decay the weights directly (AdamW-style) instead of adding
            :math:`\lambda\theta` to the gradient.
        foreach (bool): accepted; the numbers are always the for-loop's. (The authors'
            foreach path evaluates ``clip_lambda`` on a float32 step tensor, so for float64 it
            differs from their for-loop -- by 6e-11 relative after 20 steps, measured; float32
            agrees -- and this class follows the for-loop.)
        maximize (bool): maximize the objective.
        capturable, differentiable: as torch's Adam. fused: refused, as by the authors' class.
        compile (bool): run the rule under ``torch.compile`` (see the README).

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    rule = adopt_
    oracle = "adopt:ADOPT"
    lab_lr = 1e-2
    configs = (
        {}, {"lr": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.1, "decouple": True, "maximize": True},
        {"betas": (0.8, 0.99), "eps": 1e-4, "clip_lambda": None}, {"lr": torch.tensor(0.01), "betas": (0.95, 0.9)},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        clip_lambda: Callable[[Any], Any] | None = quarter_power,
        weight_decay: float = 0.0,
        decouple: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
        check_lr(lr)
        check_nonneg(eps, "epsilon value")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        check_nonneg(weight_decay, "weight_decay value")
        if clip_lambda is not None and not callable(clip_lambda):
            raise ValueError(f"clip_lambda must be callable or None, got {clip_lambda!r}")
        self.clip_lambda = clip_lambda
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)
        if fused:
            raise RuntimeError("`fused` is not currently supported")

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "clip_lambda": self.clip_lambda}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        clip_lambda = state.pop("clip_lambda", quarter_power)
        super().__setstate__(state)
        self.clip_lambda = clip_lambda
        for group in self.param_groups:
            for key, value in (("maximize", False), ("foreach", None), ("capturable", False),
                               ("differentiable", False), ("fused", None)):  # fmt: skip
                group.setdefault(key, value)

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        # clip_lambda is the optimizer's (as in the authors' class), the rest the group's.
        return self.rule.hyperparameters({**group, "clip_lambda": self.clip_lambda})

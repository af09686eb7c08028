"""MARS: variance-reduced gradients in AdamW, Lion or Shampoo (Yuan et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer, Oracle
from ..rule import rule, when, zeros
from ._pto import (
    add_scaled_update,
    all_real_dense,
    check_betas,
    check_lr,
    check_range,
    hyper_with,
    norm,
    step_counted,
)

__all__ = ["MARS", "mars_", "newton_schulz5"]

NS_WEIGHTS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(
    g: Tensor, eps: float, num_steps: int = 5, weights: tuple[float, float, float] = NS_WEIGHTS
) -> Tensor:
    r"""The orthogonal polar factor of the matrix ``g`` by 5 quintic Newton-Schulz iterations in
    bfloat16, as pytorch-optimizer's ``zero_power_via_newton_schulz_5`` (same ops, same order):
    :math:`X_0 = G / \max(\lVert G\rVert_F, \epsilon)` (transposed to be wide),
    :math:`X \leftarrow w_0 X + (w_1 A + w_2 A^2) X` with :math:`A = X X^\top`. Returns bfloat16."""
    w0, w1, w2 = weights
    transpose = g.size(-2) > g.size(-1)
    x = g.mT if transpose else g
    x = x.to(dtype=torch.bfloat16, copy=True, memory_format=torch.contiguous_format)
    x.div_(x.norm(2, dim=(-2, -1), keepdim=True).clamp_min_(eps))
    a = torch.empty((*x.shape[:-1], x.size(-2)), device=x.device, dtype=x.dtype)
    b = torch.empty_like(a)
    c = torch.empty_like(x)
    for _ in range(num_steps):
        torch.mm(x, x.mT, out=a)
        torch.addmm(a, a, a, beta=w1, alpha=w2, out=b)
        torch.addmm(x, b, x, beta=w0, alpha=1.0, out=c)
        x, c = c, x
    return x.mT if transpose else x


def _cautious(update: Tensor, grad: Tensor) -> None:
    """pytorch-optimizer's ``apply_cautious``: zero the coordinates whose sign disagrees with
    the gradient's, rescale by numel / (kept + 1) (a sum over the whole tensor)."""
    mask = (update * grad > 0).to(grad.dtype)
    mask.mul_(mask.numel() / (mask.sum() + 1))
    update.mul_(mask)


def _adam_direction(
    update: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None, c: Tensor,
    beta2: float, step: int, beta1: float, ams_bound: bool, eps: float,
) -> Tensor:  # fmt: skip
    exp_avg_sq.mul_(beta2).addcmul_(c, c, value=1.0 - beta2)
    bias_correction1 = 1.0 - math.pow(beta1, step)
    bias_correction2_sq = math.sqrt(1.0 - math.pow(beta2, step))
    if ams_bound:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        de_nom = max_exp_avg_sq.add(1e-15)
    else:
        de_nom = exp_avg_sq.add(1e-15)
    de_nom.sqrt_().add_(eps)
    de_nom.div_(bias_correction2_sq).mul_(bias_correction1)
    return update.div_(de_nom)


@rule(
    state={
        "exp_avg": zeros, "exp_avg_sq": zeros, "last_grad": zeros,
        "max_exp_avg_sq": when("ams_bound", zeros),
    },
)  # fmt: skip
def mars_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    lr_1d_factor: float | Tensor,
    betas: tuple[float, float],
    betas_1d: tuple[float, float],
    mars_type: str,
    gamma: float,
    optimize_1d: bool,
    weight_decay: float,
    weight_decay_1d: float,
    weight_decouple: bool,
    fixed_decay: bool,
    ams_bound: bool,
    cautious: bool,
    eps: float,
    maximize: bool,
    step: int,
    batched: bool,
) -> None:
    r"""One MARS step on the whole tensor ``param`` (in place), in pytorch-optimizer's op order.

    Tensors of 2 or more dimensions (all, with ``optimize_1d``) take the MARS step; with the
    previous gradient :math:`g_{t-1}` (``last_grad``):

    .. math::
        c &= g_t + \gamma \frac{\beta_1}{1-\beta_1} (g_t - g_{t-1}), \qquad
            c \leftarrow c / \max(1, \lVert c\rVert_2) \\
        m &\leftarrow \mathrm{lerp}(m, c, 1-\beta_1) \\
        u &= \frac{m}{(\sqrt{v + 10^{-15}} + \epsilon)(1-\beta_1^t) / \sqrt{1-\beta_2^t}},
            \quad v \leftarrow \beta_2 v + (1-\beta_2) c^2 \quad (\text{adamw}) \\
        u &= \operatorname{sign}(m) \quad (\text{lion}), \qquad
        u = \sqrt{\max(1, n_0/n_1)}\; \mathrm{NS}_5\!\left(\frac{m}{1-\beta_1}\right)
            \quad (\text{shampoo}) \\
        \theta &\leftarrow \theta (1 - \gamma\lambda) - \gamma u

    (:math:`\lVert c\rVert` the norm of the whole tensor; ``ams_bound`` takes the running
    maximum of :math:`v`; ``cautious`` masks :math:`u` where its sign disagrees with
    :math:`g_t`). The others take AdamW's step on :math:`g_t` with ``betas_1d``,
    ``weight_decay_1d`` and the learning rate :math:`\gamma \cdot` ``lr_1d_factor``.
    With ``weight_decouple=False`` the decay :math:`\lambda\theta` is added to the gradient
    *after* the update (so it reaches only ``last_grad``): the oracle's behaviour, kept.
    ``batched`` follows the oracle's ``foreach`` path, whose :math:`\gamma\beta_1/(1-\beta_1)`
    rounds differently from its per-tensor :math:`\gamma(\beta_1/(1-\beta_1))`.

    State: ``exp_avg`` (m), ``exp_avg_sq`` (v), ``last_grad``, ``max_exp_avg_sq``
    (``ams_bound``). The step count is the group's ``step``.
    """
    exp_avg, exp_avg_sq, last_grad = state["exp_avg"], state["exp_avg_sq"], state["last_grad"]
    max_exp_avg_sq = state.get("max_exp_avg_sq")
    if batched:  # the oracle's foreach path (adamw and lion, real tensors), its ops on one-tensor lists
        _mars_batched(
            param, -grad if maximize else grad, exp_avg, exp_avg_sq, last_grad, max_exp_avg_sq, lr=lr,
            lr_1d_factor=lr_1d_factor, betas=betas, betas_1d=betas_1d, mars_type=mars_type, gamma=gamma,
            optimize_1d=optimize_1d, weight_decay=weight_decay, weight_decay_1d=weight_decay_1d,
            weight_decouple=weight_decouple, fixed_decay=fixed_decay, ams_bound=ams_bound, cautious=cautious,
            eps=eps, step=step,
        )  # fmt: skip
        return

    if maximize:
        grad = -grad
    if param.is_complex():
        param, grad, exp_avg, exp_avg_sq, last_grad = (
            torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq, last_grad)
        )
        if max_exp_avg_sq is not None:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
    is_grad_2d = grad.ndim >= 2
    mixed = optimize_1d or is_grad_2d
    step_size = lr if mixed else lr * lr_1d_factor
    decay = weight_decay if mixed else weight_decay_1d

    if mixed:
        beta1, beta2 = betas
        c_t = (grad - last_grad).mul_(gamma * (beta1 / (1.0 - beta1))).add_(grad)
        c_t_norm = torch.norm(c_t)
        if c_t_norm > 1.0:
            c_t.div_(c_t_norm)
        exp_avg.lerp_(c_t, weight=1.0 - beta1)
        update = exp_avg.clone()
        if cautious:
            _cautious(update, grad)
        if mars_type == "lion":
            update.sign_()
        elif mars_type == "adamw" or not is_grad_2d:
            update = _adam_direction(
                update, exp_avg_sq, max_exp_avg_sq, c_t, beta2, step, beta1, ams_bound, eps
            )
        else:  # shampoo
            factor = math.sqrt(max(1.0, grad.size(0) / grad.size(1)))
            update = update.view(update.size(0), -1)
            update = newton_schulz5(update.mul_(1.0 / (1.0 - beta1)), eps=eps).mul_(factor).view_as(grad)
    else:
        beta1, beta2 = betas_1d
        exp_avg.lerp_(grad, weight=1.0 - beta1)
        update = exp_avg.clone()
        if cautious:
            _cautious(update, grad)
        update = _adam_direction(update, exp_avg_sq, max_exp_avg_sq, grad, beta2, step, beta1, ams_bound, eps)

    if decay != 0.0:
        if weight_decouple:
            param.mul_(1.0 - decay * (1.0 if fixed_decay else step_size))
        elif decay > 0.0:
            grad = grad.add(param, alpha=decay)  # the oracle adds it to the gradient after the update
    param.add_(update, alpha=-step_size)
    last_grad.copy_(grad)


def _mars_batched(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, last_grad: Tensor,
    max_exp_avg_sq: Tensor | None, *, lr: Any, lr_1d_factor: Any, betas: tuple[float, float],
    betas_1d: tuple[float, float], mars_type: str, gamma: float, optimize_1d: bool, weight_decay: float,
    weight_decay_1d: float, weight_decouple: bool, fixed_decay: bool, ams_bound: bool, cautious: bool,
    eps: float, step: int,
) -> None:  # fmt: skip
    """pytorch-optimizer's ``MARS._step_foreach`` for one tensor (``grad`` already negated
    for ``maximize``)."""
    mixed = optimize_1d or param.ndim >= 2
    lr = lr * (1.0 if mixed else lr_1d_factor)
    beta1, beta2 = betas if mixed else betas_1d
    decay = weight_decay if mixed else weight_decay_1d
    bias_correction1 = 1.0 - math.pow(beta1, step)
    bias_correction2_sq = math.sqrt(1.0 - math.pow(beta2, step))
    ps, gs, es, vs = [param], [grad], [exp_avg], [exp_avg_sq]
    corrections = gs
    if mixed:
        corrections = torch._foreach_sub(gs, [last_grad])
        torch._foreach_mul_(corrections, gamma * beta1 / (1.0 - beta1))
        torch._foreach_add_(corrections, gs)
        torch._foreach_div_(corrections, [norm(corrections[0], True).clamp_min(1.0)])
    torch._foreach_lerp_(es, corrections, weight=1.0 - beta1)
    updates = [exp_avg.clone()]
    if cautious:
        _cautious(updates[0], grad)
    if mixed and mars_type == "lion":
        torch._foreach_sign_(updates)
    else:
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, corrections, corrections, value=1.0 - beta2)
        if ams_bound:
            torch._foreach_maximum_([max_exp_avg_sq], vs)
            de_noms = torch._foreach_add([max_exp_avg_sq], 1e-15)
        else:
            de_noms = torch._foreach_add(vs, 1e-15)
        torch._foreach_sqrt_(de_noms)
        torch._foreach_add_(de_noms, eps)
        torch._foreach_div_(de_noms, bias_correction2_sq)
        torch._foreach_mul_(de_noms, bias_correction1)
        torch._foreach_div_(updates, de_noms)
    if decay != 0.0:
        if not weight_decouple:
            gs = torch._foreach_add(gs, ps, alpha=decay)  # reaches only last_grad, as in the oracle
        else:
            torch._foreach_mul_(ps, 1.0 - decay if fixed_decay else 1.0 - decay * lr)
    add_scaled_update(param, updates[0], -lr)
    torch._foreach_copy_([last_grad], gs)


class MARS(Optimizer):
    r"""MARS, "Make vAriance Reduction Shine": Yuan, Liu, Wu, Zhou, Gu & Gu, *MARS: Unleashing
    the Power of Variance Reduction for Training Large Models* (arXiv:2411.10438, 2024),
    exactly as pytorch-optimizer's ``MARS`` (version 4.1.0), which follows the authors' code
    (the approximate variant: the correction uses the previous step's gradient).

    The corrected gradient :math:`c` is clipped by its norm over the whole tensor, and
    ``cautious`` and ``'shampoo'`` (a Newton-Schulz orthogonalization of the matrix) need
    whole tensors too: under FSDP2 the parameter, gradient and state are gathered for the
    step, so the result is the unsharded one.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): :math:`\gamma` (default: 3e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` of the MARS step (default: (0.95, 0.99)).
        gamma (float): strength of the gradient correction (default: 0.025).
        mars_type (str): ``'adamw'``, ``'lion'`` or ``'shampoo'`` (default: ``'adamw'``).
        optimize_1d (bool): MARS for tensors of fewer than 2 dimensions too; else they take
            AdamW steps with ``lr_1d``, ``betas_1d`` and ``weight_decay_1d`` (default: False).
        lr_1d (float): the AdamW learning rate of those; kept in the groups as the factor
            ``lr_1d_factor = lr_1d / lr``, which follows a schedule of ``lr`` (default: 3e-3).
        betas_1d (tuple of floats): their AdamW betas (default: (0.9, 0.95)).
        weight_decay (float): :math:`\lambda` (default: 0).
        weight_decay_1d (float): their weight decay (default: 0.1).
        weight_decouple (bool): decoupled weight decay (default: True).
        fixed_decay (bool): decoupled decay not scaled by the learning rate (default: False).
        ams_bound (bool): the running maximum of the second moment (default: False).
        cautious (bool): mask update coordinates that disagree with the gradient (default: False).
        eps (float): :math:`\epsilon` (default: 1e-8).
        maximize (bool): maximize the objective.
        foreach (bool or None): which of the oracle's code paths to follow: its batched one
            (None/True; not for ``'shampoo'`` or complex parameters) or its per-tensor one
            (False); they round :math:`\gamma\beta_1/(1-\beta_1)` differently.
        **kwargs: accepted and ignored by the oracle; refused here if given.

    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``last_grad``, ``max_exp_avg_sq``
    (``ams_bound``); per group: ``step``. Unlike the oracle, ``step`` leaves ``p.grad`` as it
    was (the oracle negates it in place with ``maximize``).
    """

    rule = mars_
    oracle = Oracle("pytorch_optimizer:MARS")
    lab_lr = 3e-3
    configs = (
        {}, {"weight_decay": 0.1, "lr": 1e-2}, {"mars_type": "lion", "lr": 1e-3, "weight_decay": 0.1},
        {"mars_type": "shampoo", "lr": 1e-2},
        {"mars_type": "shampoo", "optimize_1d": True, "ams_bound": True, "cautious": True, "weight_decay": 0.1},
        {"weight_decouple": False, "weight_decay": 0.1, "weight_decay_1d": 0.05, "maximize": True},
        {"fixed_decay": True, "weight_decay": 0.01, "lr_1d": 1e-2, "betas_1d": (0.8, 0.9), "gamma": 0.05},
        {"mars_type": "lion", "cautious": True, "optimize_1d": True, "lr": torch.tensor(1e-3)},
        {"foreach": False, "ams_bound": True, "betas": (0.9, 0.999), "eps": 1e-6},
        {"optimize_1d": True, "ams_bound": True, "cautious": True, "gamma": 0.05, "weight_decay": 0.1},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        gamma: float = 0.025,
        mars_type: str = "adamw",
        optimize_1d: bool = False,
        lr_1d: float = 3e-3,
        betas_1d: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        weight_decay_1d: float = 1e-1,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        ams_bound: bool = False,
        cautious: bool = False,
        eps: float = 1e-8,
        maximize: bool = False,
        foreach: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_lr(lr)
        check_lr(lr_1d, "lr_1d")
        check_betas(betas)
        check_betas(betas_1d, "betas_1d")
        if mars_type not in ("adamw", "lion", "shampoo"):
            raise ValueError(f"mars_type must be one of 'adamw', 'lion', 'shampoo', got {mars_type!r}")
        check_range(gamma, "gamma")
        check_range(weight_decay, "weight_decay")
        check_range(weight_decay_1d, "weight_decay_1d")
        check_range(eps, "eps")
        if kwargs:
            raise ValueError(f"MARS got unexpected option(s) {sorted(kwargs)} (the oracle ignores them)")
        defaults = dict(
            lr=lr, lr_1d=lr_1d, lr_1d_factor=lr_1d / lr, betas=betas, betas_1d=betas_1d, mars_type=mars_type,
            gamma=gamma, optimize_1d=optimize_1d, weight_decay=weight_decay, weight_decay_1d=weight_decay_1d,
            weight_decouple=weight_decouple, fixed_decay=fixed_decay, ams_bound=ams_bound, cautious=cautious,
            eps=eps, foreach=foreach, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Any = None) -> Any:
        """One step; each group counts its steps in ``group["step"]``, as the oracle's."""
        return step_counted(self, closure)

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        if group["mars_type"] == "shampoo":
            for p in params:
                _check_shampoo_shapes(p, self.state.get(p), group["optimize_1d"], group["eps"])

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        batched = group["mars_type"] != "shampoo" and group["foreach"] is not False and all_real_dense(group)
        return hyper_with(self.rule, group, {"batched": batched})


def _check_shampoo_shapes(p: Tensor, state: dict[str, Any] | None, optimize_1d: bool, eps: float) -> None:
    """Raise what the Shampoo update of ``p`` would raise (its ``view`` of the momentum as a
    matrix fails for some layouts, a matrix with no columns divides by zero), before anything
    changes: the ops of the update run on meta tensors with the same shapes and strides."""
    real = torch.view_as_real(p) if p.is_complex() else p
    if real.ndim < 2:
        return
    exp_avg = state.get("exp_avg") if state else None
    if exp_avg is None:
        exp_avg = torch.zeros_like(p, memory_format=torch.preserve_format)  # as the state is made
    if exp_avg.is_complex():
        exp_avg = torch.view_as_real(exp_avg)
    meta = torch.empty_strided(exp_avg.size(), exp_avg.stride(), dtype=exp_avg.dtype, device="meta")
    math.sqrt(max(1.0, real.size(0) / real.size(1)))
    update = meta.clone().view(meta.size(0), -1)
    newton_schulz5(update, eps=eps).view_as(torch.empty(real.shape, device="meta"))

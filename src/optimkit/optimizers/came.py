"""CAME (Luo et al. 2023): Adafactor's factored second moments, with a confidence-guided
(factored) estimate of the update's instability."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..execution import sharded
from ..optimizer import Optimizer, Oracle
from ..rule import like, other, rule, scalar, when

__all__ = ["CAME", "came_"]

_HALF = (torch.float16, torch.bfloat16)
#: The state computed in float32 for half-precision parameters (``RMS`` has the parameter's dtype).
_FLOAT32_STATE = frozenset(
    ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col")
)


def _factored(p: Tensor, group: dict[str, Any]) -> bool:
    return p.grad.dim() >= 2  # came-pytorch shapes its state after the gradient


def _grad(p: Tensor) -> Tensor:
    """The gradient as came-pytorch computes with it: float32 for half-precision parameters."""
    return p.grad.float() if p.grad.dtype in _HALF else p.grad


def _zeros_like_grad(p: Tensor, group: dict[str, Any]) -> Tensor:
    return torch.zeros_like(_grad(p))


def _rows(p: Tensor, group: dict[str, Any]) -> Tensor:
    g = _grad(p)
    return torch.zeros(g.shape[:-1]).type_as(g)


def _cols(p: Tensor, group: dict[str, Any]) -> Tensor:
    g = _grad(p)
    return torch.zeros(g.shape[:-2] + g.shape[-1:]).type_as(g)


@rule(
    state={
        "step": scalar(lambda p, group: 0),
        "exp_avg": like(_zeros_like_grad),
        "exp_avg_sq_row": when(_factored, other(_rows)),
        "exp_avg_sq_col": when(_factored, other(_cols)),
        "exp_avg_res_row": when(_factored, other(_rows)),
        "exp_avg_res_col": when(_factored, other(_cols)),
        "exp_avg_sq": when(lambda p, group: not _factored(p, group), like(_zeros_like_grad)),
        "RMS": other(lambda p, group: 0),
    },
    complex=False,
)  # fmt: skip
def came_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    eps: tuple[float, float],
    clip_threshold: float,
    betas: tuple[float, float, float],
    weight_decay: float,
) -> None:
    r"""One CAME step on ``param`` (in place), in came-pytorch's op order.

    With :math:`\mathrm{rms}(x) = \|x\|_2/\sqrt{n}`, for a parameter of 2 or more dimensions
    (row/column statistics over its last two; :math:`\bar r` is the mean of :math:`r`):

    .. math::
        r &\leftarrow \beta_2 r + (1-\beta_2)\,\mathrm{mean}_{-1}(g^2 + \epsilon_1), \quad
            c \leftarrow \beta_2 c + (1-\beta_2)\,\mathrm{mean}_{-2}(g^2 + \epsilon_1) \\
        u &= g \,/\, \sqrt{(r/\bar r)\, c^\top}, \quad
            u \leftarrow u / \max(1, \mathrm{rms}(u)/d) \\
        m &\leftarrow \beta_1 m + (1-\beta_1) u \\
        U &= (u - m)^2 + \epsilon_2, \quad
            R \leftarrow \beta_3 R + (1-\beta_3)\,\mathrm{mean}_{-1}(U), \quad
            C \leftarrow \beta_3 C + (1-\beta_3)\,\mathrm{mean}_{-2}(U) \\
        \theta &\leftarrow \theta - \gamma\lambda\theta, \quad
            \theta \leftarrow \theta - \gamma\, m \,/\, \sqrt{(R/\bar R)\, C^\top}

    A parameter of 0 or 1 dimensions keeps :math:`v \leftarrow \beta_2 v + (1-\beta_2)(g^2 +
    \epsilon_1)` unfactored, :math:`u = g/\sqrt v`, and steps by :math:`\gamma m` (no confidence
    factor). Half-precision gradients are computed with in float32 (the state is float32).

    State: ``step`` (an int), ``exp_avg`` (m), ``exp_avg_sq_row``/``exp_avg_sq_col`` (r, c) and
    ``exp_avg_res_row``/``exp_avg_res_col`` (R, C) -- or ``exp_avg_sq`` (v) -- and ``RMS``, the
    parameter's rms before the step (kept, not used, as came-pytorch does).
    """
    beta1, beta2, beta3 = betas
    if grad.dtype in _HALF:
        grad = grad.float()
    factored = grad.dim() >= 2
    state["step"] += 1
    state["RMS"] = _rms(param)

    update = (grad**2) + eps[0]
    if factored:
        exp_avg_sq_row, exp_avg_sq_col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        exp_avg_sq_row.mul_(beta2).add_(update.mean(dim=-1), alpha=1.0 - beta2)
        exp_avg_sq_col.mul_(beta2).add_(update.mean(dim=-2), alpha=1.0 - beta2)
        update = _approx_sq_grad(exp_avg_sq_row, exp_avg_sq_col)
        update.mul_(grad)
    else:
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).add_(update, alpha=1.0 - beta2)
        update = exp_avg_sq.rsqrt().mul_(grad)

    update.div_((_rms(update) / clip_threshold).clamp_(min=1.0))

    exp_avg = state["exp_avg"]
    exp_avg.mul_(beta1).add_(update, alpha=1 - beta1)

    # Confidence: the instability of the update, (u - m)^2, factored like the second moment.
    res = (update - exp_avg) ** 2 + eps[1]
    if factored:
        exp_avg_res_row, exp_avg_res_col = state["exp_avg_res_row"], state["exp_avg_res_col"]
        exp_avg_res_row.mul_(beta3).add_(res.mean(dim=-1), alpha=1.0 - beta3)
        exp_avg_res_col.mul_(beta3).add_(res.mean(dim=-2), alpha=1.0 - beta3)
        update = _approx_sq_grad(exp_avg_res_row, exp_avg_res_col).mul_(exp_avg)
    else:
        update = exp_avg.clone()

    if weight_decay != 0:
        param.add_(param, alpha=-weight_decay * lr)
    update.mul_(lr)
    param.add_(-update)


def _rms(t: Tensor) -> Tensor:
    return t.norm(2) / (t.numel() ** 0.5)


def _approx_sq_grad(row: Tensor, col: Tensor) -> Tensor:
    """:math:`1/\\sqrt{(r/\\bar r)\\, c^\\top}` from the row and column statistics."""
    r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
    c_factor = col.unsqueeze(-2).rsqrt()
    return torch.mul(r_factor, c_factor)


class CAME(Optimizer):
    r"""CAME, exactly as the authors' ``came_pytorch.CAME`` (0.1.3).

    Luo et al., "CAME: Confidence-guided Adaptive Memory Efficient Optimization", ACL 2023.
    Adafactor's factored second moments and update clipping, plus first moments whose step
    is scaled down where the update is unstable -- where it differs from its own moving
    average -- that instability factored into row and column statistics as well.

    Args:
        params: real parameters, named parameters or parameter groups.
        lr (float): the learning rate :math:`\gamma`; required (``None``, the oracle's
            default, is refused), > 0. The paper uses about 2e-4.
        eps (tuple): :math:`(\epsilon_1, \epsilon_2)`, added to :math:`g^2` and to the
            instability (default: (1e-30, 1e-16)).
        clip_threshold (float): :math:`d`, the largest rms of the normalized update (default: 1.0).
        betas (tuple): :math:`(\beta_1, \beta_2, \beta_3)` for the update, the squared
            gradient and the instability (default: (0.9, 0.999, 0.9999)); each in [0, 1].
        weight_decay (float): :math:`\lambda`, decoupled and scaled by lr (default: 0.0).

    State per parameter: ``step``, ``exp_avg``, ``RMS`` and ``exp_avg_sq_row``,
    ``exp_avg_sq_col``, ``exp_avg_res_row``, ``exp_avg_res_col`` (2 or more dimensions) or
    ``exp_avg_sq`` (0 or 1 dimension). Half-precision parameters keep float32 state.
    """

    rule = came_
    _sparse_error = "CAME does not support sparse gradients."
    oracle = Oracle("came_pytorch:CAME")
    lab_lr = 2e-3
    configs = (
        {"lr": 1e-3}, {"lr": 1e-3, "weight_decay": 0.1}, {"lr": 3e-3, "clip_threshold": 0.5},
        {"lr": 1e-3, "betas": (0.8, 0.99, 0.999), "eps": (1e-20, 1e-12)},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        weight_decay: float = 0.0,
    ) -> None:
        if lr is None:
            raise ValueError("CAME needs a learning rate: lr=None (the default) is not one; pass e.g. lr=2e-4")
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr} (CAME's lr must be > 0)")
        if not all(0.0 <= beta <= 1.0 for beta in betas):
            raise ValueError(f"Invalid betas: {betas} (each must be in [0, 1])")
        defaults = dict(lr=lr, eps=eps, clip_threshold=clip_threshold, betas=betas, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _cast_state(self, param: Tensor, value: Any, group: dict[str, Any], key: Any = None) -> Any:
        """As the base class, except that a half-precision parameter's moments stay float32
        (came-pytorch makes them so; torch's loader, and so came-pytorch's own, casts them
        to the parameter's dtype and does not resume exactly)."""
        if param.dtype in _HALF and key in _FLOAT32_STATE and isinstance(value, Tensor) and value.is_floating_point():
            return sharded.localize_loaded(value.to(dtype=torch.float32, device=param.device, copy=True), param)
        return super()._cast_state(param, value, group, key)

"""Adafactor (Shazeer & Stern 2018): second moments factored into row and column means."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ..rule import like, other, rule, step, when

__all__ = ["Adafactor", "adafactor_"]


def _factored(p: Tensor, group: dict[str, Any]) -> bool:
    return p.grad.dim() > 1  # torch shapes the state after the gradient


@rule(
    state={
        "step": step,
        "row_var": when(_factored, other(lambda p, group: p.grad.new_zeros((*p.grad.shape[:-1], 1)))),
        "col_var": when(_factored, other(lambda p, group: p.grad.new_zeros((*p.grad.shape[:-2], 1, p.grad.shape[-1])))),
        "variance": when(
            lambda p, group: not _factored(p, group),
            like(lambda p, group: torch.zeros_like(p.grad, memory_format=torch.preserve_format)),
        ),
    },
    complex=False,
)  # fmt: skip
def adafactor_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    beta2_decay: float,
    eps: tuple[float | None, float],
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adafactor step on ``param`` (in place), as torch's for-loop implementation.

    .. math::
        t &\leftarrow t + 1, \quad \hat\beta_{2,t} = 1 - t^{\tau}, \quad
            \rho_t = \min(\gamma, 1/\sqrt t), \quad
            \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta))\,\rho_t \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) \\
        R &\leftarrow \mathrm{lerp}(R, \mathrm{mean}_{-1}(g^2), t^{\tau}), \quad
            C \leftarrow \mathrm{lerp}(C, \mathrm{mean}_{-2}(g^2), t^{\tau}), \quad
            \hat V = R C / \max(\mathrm{mean}_{-2}(R), \epsilon_1) \quad (\dim \ge 2) \\
        \hat V &= V \leftarrow \mathrm{lerp}(V, g^2, t^{\tau}) \quad (\dim < 2) \\
        U &= g / \sqrt{\max(\hat V, \epsilon_1^2)}, \quad
            \theta \leftarrow \theta - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U)/d)}\, U

    ``eps1=None`` means the machine epsilon of ``param``'s dtype. State: ``step`` (a scalar
    tensor), ``row_var`` (R) and ``col_var`` (C) for tensors of 2 or more dimensions (the
    gradient's shape with the last, resp. second-to-last, dimension reduced to 1), else
    ``variance`` (V).
    """
    eps1, eps2 = eps
    if maximize:
        grad = -grad
    if eps1 is None:
        eps1 = torch.finfo(param.dtype).eps
    step_t = state["step"]
    step_t += 1
    step = step_t.item()

    one_minus_beta2_t = step**beta2_decay
    rho_t = min(lr, 1 / (step**0.5))
    alpha = max(eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho_t

    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)

    if grad.dim() > 1:
        row_var, col_var = state["row_var"], state["col_var"]
        # norm(...)^2 / n is torch's way of taking mean(g * g) without a gradient-sized temporary.
        row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))
        row_var.lerp_(row_mean, one_minus_beta2_t)
        col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))
        col_var.lerp_(col_mean, one_minus_beta2_t)
        var_estimate = row_var @ col_var
        var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        variance = state["variance"]
        variance.lerp_(grad * grad, one_minus_beta2_t)
        var_estimate = variance.clone()  # the update below works in place

    # eps1 is squared because the square root is taken next.
    update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
    update.mul_(grad)
    denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))
    param.add_(update, alpha=-alpha / denom)


class Adafactor(Optimizer):
    r"""Adafactor, exactly as ``torch.optim.Adafactor`` (its for-loop implementation).

    Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
    As in torch, ``lr`` caps the relative step size :math:`\rho_t` and scales the decoupled
    weight decay, and :math:`\epsilon_1` stabilizes the variance estimate and the update.

    Args:
        params: real parameters, named parameters or parameter groups.
        lr (float or Tensor): maximum relative step size :math:`\gamma` (default: 1e-2).
        beta2_decay (float): :math:`\tau \le 0`; :math:`\hat\beta_{2,t} = 1 - t^\tau` (default: -0.8).
        eps (tuple): :math:`(\epsilon_1, \epsilon_2)`; :math:`\epsilon_1` ``None`` means the
            dtype's machine epsilon (default: (None, 1e-3)).
        d (float): update clipping threshold, :math:`\ge 1` (default: 1.0).
        weight_decay (float): decoupled weight decay :math:`\lambda` (default: 0.0).
        foreach (bool): accepted for compatibility; optimkit always computes torch's for-loop numbers.
        maximize (bool): maximize the objective.

    State per parameter: ``step``; ``row_var`` and ``col_var`` (2 or more dimensions) or
    ``variance`` (0 or 1 dimension).
    """

    rule = adafactor_
    lab_lr = 0.05
    configs = (
        {}, {"lr": 0.05}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.1, "lr": 0.01},
        {"weight_decay": 0.1, "maximize": True}, {"beta2_decay": -1.0}, {"beta2_decay": -0.5, "d": 1.5},
        {"eps": (1e-30, 1e-2)}, {"eps": (0.5, 0.0), "lr": 0.5}, {"d": 4.0, "lr": 1.0, "weight_decay": 0.01},
        {"foreach": False, "maximize": True},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        defaults = dict(
            lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        # torch's checks, in its order (complex before sparse, parameter by parameter).
        for p in params:
            if torch.is_complex(p):
                raise RuntimeError("Adafactor does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        hyper = super()._hyper(group)
        eps1, eps2 = hyper["eps"]
        if eps1 is None:
            # torch resolves eps1=None from the group's *first* parameter with a gradient and
            # then uses that value for the whole group (it matters for mixed-dtype groups).
            first = next(p for p in group["params"] if p.grad is not None)
            hyper["eps"] = (torch.finfo(first.dtype).eps, eps2)
        return hyper

"""Adan: adaptive Nesterov momentum from gradient differences (Xie et al. 2022/2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..execution.sharded import is_dtensor
from ..ops import as_real, taken
from ..optimizer import Optimizer
from ..rule import created, moment, rule

__all__ = ["Adan", "adan_"]


def _sqrt(x: Any) -> Any:
    """``math.sqrt`` (the oracle's) on a number; ``sqrt`` of a 0-d tensor under torch.compile."""
    return x.sqrt() if isinstance(x, Tensor) else math.sqrt(x)


@rule(
    state={"exp_avg": moment(), "exp_avg_sq": moment(nonnegative=True), "exp_avg_diff": moment(),
           "previous_grad": created},
    elementwise=True,
)  # fmt: skip
def adan_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float, float],
    eps: float,
    weight_decay: float,
    weight_decouple: bool,
    maximize: bool,
    step: int,
    clip_global_grad_norm: float,
) -> None:
    r"""One Adan step on ``param`` (in place), as pytorch-optimizer's per-parameter path.

    With :math:`t` the group's step (counted before the update) and :math:`c` the global
    gradient-norm clip factor (1 without ``max_grad_norm``):

    .. math::
        g_t &\leftarrow c \cdot (\pm\nabla f(\theta)), \quad \Delta_t = g_t - g_{t-1} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g_t, \quad
            d \leftarrow \beta_2 d + (1-\beta_2) \Delta_t \\
        n &\leftarrow \beta_3 n + (1-\beta_3) (g_t + \beta_2 \Delta_t)^2, \quad
            \delta = \sqrt{n} / \sqrt{1-\beta_3^t} + \epsilon \\
        \theta &\leftarrow \theta(1-\gamma\lambda) \text{ (decoupled)} \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\frac{m}{\delta}
            - \frac{\gamma\beta_2}{1-\beta_2^t}\frac{d}{\delta} \\
        \theta &\leftarrow \theta / (1+\gamma\lambda) \text{ (coupled: the paper's proximal step)}

    State: ``exp_avg`` (m), ``exp_avg_diff`` (d), ``exp_avg_sq`` (n), ``previous_grad``
    (:math:`-g_{t-1}`; at a parameter's first step :math:`-c\nabla f`, taken before
    ``maximize`` as the oracle does, so the first difference is 0 -- or :math:`\mp 2g` when
    maximizing).
    """
    beta1, beta2, beta3 = betas
    previous = state.get("previous_grad")
    if previous is None:
        previous = state["previous_grad"] = grad.clone().mul_(-clip_global_grad_norm)
    if maximize:
        grad = -grad
    param, grad, exp_avg, exp_avg_sq, exp_avg_diff, grad_diff = as_real(
        param, grad, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"], previous
    )
    if taken(clip_global_grad_norm != 1.0):
        grad = grad.mul(clip_global_grad_norm)

    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    bias_correction3_sq = _sqrt(1.0 - beta3**step)

    grad_diff.add_(grad)  # the previous gradient is kept negated: g_t - g_{t-1}
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_diff.lerp_(grad_diff, 1.0 - beta2)
    grad_diff.mul_(beta2).add_(grad)
    exp_avg_sq.mul_(beta3).addcmul_(grad_diff, grad_diff, value=1.0 - beta3)
    de_nom = exp_avg_sq.sqrt().div_(bias_correction3_sq).add_(eps)

    if taken(weight_decay != 0) and weight_decouple:
        param.mul_(1.0 - lr * weight_decay)
    param.addcdiv_(exp_avg, de_nom, value=-lr / bias_correction1)
    param.addcdiv_(exp_avg_diff, de_nom, value=-lr * beta2 / bias_correction2)
    if taken(weight_decay != 0) and not weight_decouple:
        param.div_(1.0 + lr * weight_decay)
    grad_diff.copy_(grad).neg_()


class Adan(Optimizer):
    r"""Adan: Xie et al., *Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
    Deep Models* (TPAMI 2024; arXiv 2022), exactly as pytorch-optimizer's ``Adan`` (4.1.0),
    with ``foreach=False``, bit for bit in every dtype.

    Adan keeps the previous gradient and averages the gradient, the gradient *difference*
    and the square of the Nesterov-corrected gradient :math:`g_t + \beta_2 (g_t - g_{t-1})`.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of 3 floats): :math:`(\beta_1, \beta_2, \beta_3)` (default: (0.98, 0.92, 0.99)).
        weight_decay (float): :math:`\lambda` (default: 0).
        weight_decouple (bool): decay the weights before the update (AdamW-style) instead of
            the paper's proximal division by :math:`1+\gamma\lambda` after it.
        max_grad_norm (float): if positive, every gradient is scaled by
            :math:`c = \min(1, \text{max\_grad\_norm} / (\lVert g \rVert + \epsilon))` with
            :math:`\lVert g \rVert` the norm over *all* the optimizer's gradients (every group),
            computed as the oracle does: in float32, from the constructor's ``max_grad_norm``
            and ``eps`` (the groups' copies are not read). Under FSDP2 the norm is of the
            whole (unsharded) gradients; under ``ZeroRedundancyOptimizer`` each rank's
            optimizer would see only its own parameters' gradients.
        foreach (bool): accepted; the numbers are always the per-parameter path's (on CPU the
            oracle's foreach path gives the same bits, measured over 20 steps in float32/float64).
        eps (float): :math:`\epsilon` (default: 1e-8).
        maximize (bool): maximize the objective (a group key here; the oracle keeps it on the
            optimizer).
        kwargs: other keys kept in the groups, as the oracle does; its gradient
            centralization (``use_gc``) and AdaNorm (``adanorm``) are refused.
        compile (bool): run the rule under ``torch.compile`` (see the README).

    The step count is group state (``group["step"]``, an int, counted for every group at
    every step), as in the oracle. Unlike the oracle, ``step`` leaves ``p.grad`` as it was
    (the oracle scales and negates it in place).

    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``previous_grad``.
    """

    rule = adan_
    oracle = "pytorch_optimizer:Adan"
    lab_lr = 1e-2
    configs = (
        {}, {"lr": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.1, "weight_decouple": True},
        {"maximize": True, "betas": (0.9, 0.9, 0.999)}, {"max_grad_norm": 0.5},
        {"lr": 1e-2, "max_grad_norm": 1.0, "weight_decay": 0.05, "eps": 1e-6},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        weight_decay: float = 0.0,
        weight_decouple: bool = False,
        max_grad_norm: float = 0.0,
        foreach: bool | None = None,
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"learning rate must be positive. ({lr} > 0)")
        for i, name in enumerate(("beta1", "beta2")):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"{name} must be in the range [0.0, 1.0)")
        if len(betas) != 3:
            raise ValueError(f"betas must be three floats (beta1, beta2, beta3), got {betas!r}")
        if not 0.0 <= betas[2] <= 1.0:
            raise ValueError("beta3 must be in the range [0.0, 1.0]")
        for name, value in (("weight_decay", weight_decay), ("max_grad_norm", max_grad_norm), ("eps", eps)):
            if value < 0.0:
                raise ValueError(f"{name} must be non-negative")
        for key in ("use_gc", "adanorm"):
            if kwargs.get(key):
                raise ValueError(f"Adan: {key}=True (pytorch-optimizer's extension) is not supported by optimkit")
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=weight_decouple,
            max_grad_norm=max_grad_norm, foreach=foreach, eps=eps, **kwargs, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)
        self._clip: float = 1.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._clip = 1.0
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adan step: the global gradient norm first (with ``max_grad_norm``), then each
        group, whose ``step`` counts up whether or not any of its parameters has a gradient."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._clip = self._global_clip()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            self._step_group(group)
        return loss

    def _global_clip(self) -> float:
        r""":math:`\min(1, \text{max\_grad\_norm} / (\lVert g \rVert + \epsilon))` over every
        gradient of every group, in pytorch-optimizer's arithmetic (squared norms summed in
        float32). DTensor (FSDP2) gradients give their global norms."""
        max_grad_norm = self.defaults["max_grad_norm"]
        if max_grad_norm == 0.0:
            return 1.0
        params = [p for group in self.param_groups for p in group["params"]]
        device = params[0].device if params else torch.device("cpu")
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            norm_sq = torch.zeros(1, dtype=torch.float32, device=device)
        else:
            half = (torch.float16, torch.bfloat16)
            if any(is_dtensor(g) for g in grads):
                norms = [torch.linalg.vector_norm(g.float() if g.dtype in half else g) for g in grads]
                norms = [n.full_tensor() if is_dtensor(n) else n for n in norms]
            elif len({(g.device, g.dtype) for g in grads}) == 1 and not grads[0].is_sparse and grads[0].dtype not in half:
                norms = list(torch._foreach_norm(grads))
            else:
                norms = [(g.float() if g.dtype in half else g).norm() for g in grads]
            norm_sq = torch.stack([n.to(device) for n in norms]).float().square_().sum().reshape(1)
        norm = norm_sq.sqrt_().add_(self.defaults["eps"])
        return torch.clamp(max_grad_norm / norm, max=1.0).item()

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        # The clip factor is the optimizer's, computed at the start of the step.
        return self.rule.hyperparameters({**group, "clip_global_grad_norm": self._clip})

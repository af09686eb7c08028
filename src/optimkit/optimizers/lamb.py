"""LAMB: Adam's update scaled per tensor by a trust ratio (You et al. 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..execution import sharded
from ..optimizer import Optimizer, Oracle
from ..rule import Slot, rule, zeros
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

__all__ = ["LAMB", "lamb_", "global_grad_scale", "rectify_step_size"]

#: State the rule makes itself: per-tensor diagnostics (0-dim tensors, as the oracle keeps them).
_made = Slot(None, "other")
#: The oracle's cap on the weight norm in the trust ratio (``Lamb.clamp``).
CLAMP = 10.0


def rectify_step_size(
    rectify: bool, step: int, lr: Any, beta2: float, n_sma_threshold: int, degenerated_to_sgd: bool
) -> tuple[Any, float]:
    """RAdam's rectified step size and simple-moving-average length, as pytorch-optimizer's
    ``BaseOptimizer.get_rectify_step_size`` computes them (same float ops)."""
    step_size, n_sma = lr, 0.0
    if rectify:
        n_sma_max = 2.0 / (1.0 - beta2) - 1.0
        beta2_t = beta2**step
        n_sma = n_sma_max - 2 * step * beta2_t / (1.0 - beta2_t)
        if n_sma >= n_sma_threshold:
            rt = math.sqrt(
                (1.0 - beta2_t)
                * (n_sma - 4)
                / (n_sma_max - 4)
                * (n_sma - 2)
                / n_sma
                * n_sma_max
                / (n_sma_max - 2)
            )
        elif degenerated_to_sgd:
            rt = 1.0
        else:
            rt = -1.0
        step_size = step_size * rt
    return step_size, n_sma


@rule(
    state={"exp_avg": zeros, "exp_avg_sq": zeros, "weight_norm": _made, "adam_norm": _made, "trust_ratio": _made},
)  # fmt: skip
def lamb_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    weight_decay: float,
    weight_decouple: bool,
    fixed_decay: bool,
    rectify: bool,
    degenerated_to_sgd: bool,
    n_sma_threshold: int,
    grad_averaging: bool,
    adam: bool,
    eps: float,
    maximize: bool,
    adam_debias: bool,
    step: int,
    grad_scale: Tensor | float | None,
    batched: bool,
) -> None:
    r"""One LAMB step on the whole tensor ``param`` (in place), in pytorch-optimizer's op order.

    .. math::
        g &\leftarrow s\, g \quad (s = \min(1, N / (\lVert g_{\text{all}}\rVert_2 + \epsilon)),
            \text{ with pre\_norm}) \\
        m &\leftarrow \beta_1 m + \beta_3 g \quad (\beta_3 = 1-\beta_1 \text{ with grad\_averaging, else } 1),
            \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta (1 - \lambda\gamma) \quad (\text{decoupled; } 1-\lambda \text{ with fixed\_decay}) \\
        r &= \frac{m}{\sqrt v + \epsilon} \;(+\lambda\theta \text{ when coupled}), \qquad
        \eta_t = \frac{\gamma}{1-\beta_1^t} \\
        \phi &= \frac{\min(\lVert\theta\rVert_2, 10)}{\lVert r\rVert_2 + \epsilon}
            \quad (1 \text{ if either norm is } 0 \text{, or with adam=True}) \\
        \theta &\leftarrow \theta - \eta_t\, \phi\, r

    With ``rectify``, :math:`\eta_t` is RAdam's rectified step and the trust ratio is taken of
    :math:`\theta - \eta_t m / (\sqrt v + \epsilon)` (the oracle's choice), an SGD step below
    the SMA threshold. The norms are of the whole tensor (Frobenius). ``batched`` selects the
    oracle's ``foreach`` path (:math:`r = m \cdot (\sqrt v + \epsilon)^{-1}`, the ratio
    multiplied into :math:`r`), else its per-tensor path (:math:`m / (\sqrt v + \epsilon)`, the
    ratio folded into the step size): the same formula rounded differently.

    State: ``exp_avg`` (m), ``exp_avg_sq`` (v), and the last step's ``weight_norm``,
    ``adam_norm`` (:math:`\lVert r\rVert`) and ``trust_ratio`` (:math:`\phi`). The step count is
    the group's ``step``.
    """
    beta1, beta2 = betas
    beta3 = 1.0 - beta1 if grad_averaging else 1.0
    step_size, n_sma = rectify_step_size(rectify, step, lr, beta2, n_sma_threshold, degenerated_to_sgd)
    if not adam_debias:
        step_size = step_size / (1.0 - math.pow(beta1, step))
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

    if batched:  # the oracle's foreach path (never with rectify), its ops on one-tensor lists
        ps, es, vs = [param], [exp_avg], [exp_avg_sq]
        gs = [-grad] if maximize else [grad]
        if grad_scale is not None:  # in place on a copy, as the oracle's on p.grad (its dtype)
            gs = [gs[0] if maximize else grad.clone()]
            torch._foreach_mul_(gs, grad_scale)
        if weight_decouple and weight_decay != 0.0:
            torch._foreach_mul_(ps, 1.0 - weight_decay if fixed_decay else 1.0 - weight_decay * lr)
        torch._foreach_mul_(es, beta1)
        torch._foreach_add_(es, gs, alpha=beta3)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1.0 - beta2)
        updates = torch._foreach_sqrt(vs)
        torch._foreach_add_(updates, eps)
        torch._foreach_reciprocal_(updates)
        torch._foreach_mul_(updates, es)
        if not weight_decouple and weight_decay > 0.0:
            torch._foreach_add_(updates, ps, alpha=weight_decay)
        weight_norm = norm(param, True).clamp_(max=CLAMP)
        adam_norm = norm(updates[0], True)
        trust_ratio = torch.where((weight_norm != 0) & (adam_norm != 0), weight_norm / (adam_norm + eps), 1.0)
        state["weight_norm"], state["adam_norm"], state["trust_ratio"] = weight_norm, adam_norm, trust_ratio
        if not adam:
            torch._foreach_mul_(updates, [trust_ratio])
        add_scaled_update(param, updates[0], -step_size)
        return

    if grad_scale is not None:
        # The oracle's in-place grad.mul_(scale): the gradient's dtype (an out-of-place product
        # of a 0-dim bfloat16 gradient and the float32 scale would be float32).
        grad = grad.clone().mul_(grad_scale)
    if maximize:
        grad = -grad
    if param.is_complex():
        param, grad, exp_avg, exp_avg_sq = (torch.view_as_real(t) for t in (param, grad, exp_avg, exp_avg_sq))
    exp_avg.mul_(beta1).add_(grad, alpha=beta3)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    if weight_decay != 0.0 and weight_decouple:
        param.mul_(1.0 - weight_decay * (1.0 if fixed_decay else lr))

    if rectify and step_size <= 0:
        return
    if rectify:
        update = param.clone()
        if n_sma >= n_sma_threshold:
            de_nom = exp_avg_sq.sqrt().add_(eps)
            update.addcdiv_(exp_avg, de_nom, value=-step_size)
        else:
            update.add_(exp_avg, alpha=-step_size)
    else:
        update = exp_avg_sq.sqrt().add_(eps)
        torch.div(exp_avg, update, out=update)
        if not weight_decouple and weight_decay > 0.0:
            update.add_(param, alpha=weight_decay)

    weight_norm = norm(param, False).clamp_(min=0, max=CLAMP)
    adam_norm = norm(update, False)
    trust_ratio: Any = 1.0 if weight_norm == 0 or adam_norm == 0 else weight_norm / (adam_norm + eps)
    state["weight_norm"], state["adam_norm"], state["trust_ratio"] = weight_norm, adam_norm, trust_ratio
    if adam:
        trust_ratio = 1.0
    if rectify:
        if n_sma >= n_sma_threshold:
            param.addcdiv_(exp_avg, de_nom, value=-step_size * trust_ratio)
        else:
            param.add_(exp_avg, alpha=-step_size * trust_ratio)
    else:
        param.add_(update, alpha=-step_size * trust_ratio)


def global_grad_scale(param_groups: list[dict[str, Any]], max_grad_norm: float, eps: float) -> Tensor | float:
    r""":math:`\min(1, N / (\lVert g\rVert_2 + \epsilon))` over every gradient of every group, as
    pytorch-optimizer computes it: each tensor's norm in its own dtype (float32 for 16-bit
    gradients), then squared and summed **in float32** -- for float64 parameters too. A
    float32 0-dim tensor (1.0, a float, when ``max_grad_norm`` is 0).

    The norm of a DTensor gradient (FSDP2) is the norm of the whole tensor, so the scale is the
    same on every rank. Under ZeRO-1 each rank's optimizer sees only its own parameters."""
    if max_grad_norm == 0.0:
        return 1.0
    params = [p for group in param_groups for p in group["params"]]
    device = next((p.device for p in params), torch.device("cpu"))
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        total = torch.zeros(1, dtype=torch.float32, device=device)
    else:
        same = all(
            g.device == grads[0].device and g.dtype == grads[0].dtype and not g.is_sparse for g in grads
        )
        half = (torch.float16, torch.bfloat16)
        if sharded.any_dtensor(grads):
            norms = [torch.linalg.vector_norm(g.float() if g.dtype in half else g) for g in grads]
            norms = [n.full_tensor() if sharded.is_dtensor(n) else n for n in norms]
        elif same and grads[0].dtype not in half:
            norms = list(torch._foreach_norm(grads))
        else:
            norms = [(g.float() if g.dtype in half else g).norm() for g in grads]
        total = torch.stack([n.to(device) for n in norms]).float().square_().sum().reshape(1)
    total.sqrt_().add_(eps)
    return torch.clamp(max_grad_norm / total, max=1.0).squeeze(0)


class LAMB(Optimizer):
    r"""LAMB, "Layer-wise Adaptive Moments optimizer for Batch training": You et al., *Large
    Batch Optimization for Deep Learning: Training BERT in 76 minutes* (ICLR 2020), exactly as
    pytorch-optimizer's ``Lamb`` (version 4.1.0).

    Which LAMB. The paper's arXiv versions differ in the bias correction of the moments and in
    where the weight decay enters (v3, the ICLR version, adds :math:`\lambda\theta` to the
    Adam direction whose norm the trust ratio takes); implementations differ again. This is
    pytorch-optimizer's: Adam's direction :math:`r = m / (\sqrt v + \epsilon)` with *no*
    second-moment bias correction and the first moment's folded into the step size
    :math:`\gamma / (1 - \beta_1^t)` (its docstring says "version 3 of the paper without bias
    correction"; its code divides by :math:`1-\beta_1^t` -- the code is followed); weight decay
    *decoupled* by default (:math:`\theta \leftarrow \theta(1-\gamma\lambda)` before the update,
    outside :math:`r`; ``weight_decouple=False`` puts :math:`\lambda\theta` into :math:`r` as
    v3 does); trust ratio :math:`\min(\lVert\theta\rVert, 10) / (\lVert r\rVert + \epsilon)`,
    1 where either norm is 0; no gradient clipping unless ``pre_norm``. It is not timm's
    ``Lamb``, whose defaults bias-correct both moments and clip the global gradient norm.

    Every step is per whole tensor (the norms are Frobenius norms of the entire parameter):
    under FSDP2 the parameter, gradient and state are gathered for the step
    (``optimkit.execution.sharded``), so the result is the unsharded one.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): :math:`\gamma` (default: 1e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        weight_decay (float): :math:`\lambda` (default: 0).
        weight_decouple (bool): decoupled weight decay (default: True).
        fixed_decay (bool): decoupled decay not scaled by the learning rate (default: False).
        rectify (bool): RAdam's rectified step size (default: False).
        degenerated_to_sgd (bool): with ``rectify``, an SGD step below the SMA threshold
            instead of none (default: False).
        n_sma_threshold (int): the rectification threshold (default: 5).
        grad_averaging (bool): scale the gradient into :math:`m` by :math:`1-\beta_1` (default: True).
        max_grad_norm (float): :math:`N`, with ``pre_norm``: gradients are scaled by
            :math:`\min(1, N / (\lVert g\rVert + \epsilon))`, the norm over *all* gradients of
            all groups; 0 disables it (default: 1.0). As in the oracle the constructor's
            ``max_grad_norm`` and ``eps`` are used, and the norm is summed in float32 (also
            for float64 parameters). Under FSDP2 it is the norm of the whole model on every
            rank; under ``ZeroRedundancyOptimizer`` each rank's LAMB sees only the parameters
            it owns, so the norm is of those.
        adam (bool): trust ratio 1 (plain Adam without second-moment correction) (default: False).
        pre_norm (bool): scale gradients by their global norm first (default: False).
        eps (float): :math:`\epsilon` (default: 1e-6).
        foreach (bool or None): which of the oracle's two code paths to follow: its batched
            one (None/True, the oracle's default for real dense parameters without
            ``rectify``) or its per-tensor one (False); they round differently.
        maximize (bool): maximize the objective.
        **kwargs: ``adam_debias=True`` (no first-moment correction of the step size) as the
            oracle's; its ``adanorm`` is not implemented (refused).

    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``weight_norm``, ``adam_norm``,
    ``trust_ratio``; per group: ``step``. Unlike the oracle, ``step`` leaves ``p.grad`` as it
    was (the oracle negates and scales it in place).
    """

    rule = lamb_
    oracle = Oracle(
        "pytorch_optimizer:Lamb",
        note="matches the oracle's float32 global gradient norm (pre_norm), also for float64 parameters",
    )
    lab_lr = 1e-2
    configs = (
        {}, {"lr": 1e-2, "weight_decay": 0.1}, {"weight_decay": 0.1, "weight_decouple": False},
        {"pre_norm": True, "max_grad_norm": 0.5, "maximize": True}, {"rectify": True, "lr": 1e-2},
        {"rectify": True, "degenerated_to_sgd": True, "weight_decay": 0.05, "n_sma_threshold": 4},
        {"adam": True, "grad_averaging": False, "fixed_decay": True, "weight_decay": 0.01},
        {"foreach": False, "weight_decay": 0.1, "pre_norm": True, "max_grad_norm": 0.0},
        {"adam_debias": True, "lr": torch.tensor(0.01), "eps": 1e-8},
        {"pre_norm": True, "max_grad_norm": 0.1, "weight_decay": 0.05, "lr": 1e-2, "betas": (0.8, 0.99)},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        rectify: bool = False,
        degenerated_to_sgd: bool = False,
        n_sma_threshold: int = 5,
        grad_averaging: bool = True,
        max_grad_norm: float = 1.0,
        adam: bool = False,
        pre_norm: bool = False,
        eps: float = 1e-6,
        foreach: bool | None = None,
        maximize: bool = False,
        **kwargs: Any,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_range(weight_decay, "weight_decay")
        check_range(max_grad_norm, "max_grad_norm")
        check_range(eps, "eps")
        unknown = sorted(set(kwargs) - {"adam_debias"})
        if unknown:
            raise ValueError(
                f"LAMB does not implement the oracle's extra option(s) {unknown} (only adam_debias)"
            )
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, weight_decouple=weight_decouple,
            fixed_decay=fixed_decay, rectify=rectify, grad_averaging=grad_averaging,
            max_grad_norm=max_grad_norm, adam=adam, eps=eps, foreach=foreach,
            adam_debias=bool(kwargs.get("adam_debias", False)), maximize=maximize, pre_norm=pre_norm,
            n_sma_threshold=n_sma_threshold, degenerated_to_sgd=degenerated_to_sgd,
        )  # fmt: skip
        super().__init__(params, defaults)
        self._grad_scale: Tensor | float | None = None

    def step(self, closure: Any = None) -> Any:
        """One step; the global gradient norm (``pre_norm``) is taken once, over all groups."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pre_norm = any(group["pre_norm"] for group in self.param_groups)
        self._grad_scale = (
            global_grad_scale(self.param_groups, self.defaults["max_grad_norm"], self.defaults["eps"])
            if pre_norm
            else None
        )
        try:
            step_counted(self, None)
        finally:
            self._grad_scale = None
        return loss

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        computed = {
            "grad_scale": self._grad_scale if group["pre_norm"] else None,
            "batched": group["foreach"] is not False and not group["rectify"] and all_real_dense(group),
        }
        return hyper_with(self.rule, group, computed)

"""LARS: SGD with a per-tensor learning rate from the weight and gradient norms (You et al. 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer, Oracle
from ..rule import rule, when, zeros
from ._pto import add_scaled_update, all_real_dense, check_lr, check_range, hyper_with, norm, step_counted

__all__ = ["LARS", "lars_"]


@rule(state={"momentum_buffer": when(lambda p, group: group["momentum"] > 0.0, zeros)})
def lars_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    trust_coefficient: float,
    nesterov: bool,
    maximize: bool,
    batched: bool,
) -> None:
    r"""One LARS step on the whole tensor ``param`` (in place), in pytorch-optimizer's op order.

    For tensors of 2 or more dimensions (weights):

    .. math::
        \phi &= \eta\, \frac{\lVert\theta\rVert_2}{\lVert g\rVert_2 + \lambda \lVert\theta\rVert_2}
            \quad (1 \text{ if } \lVert\theta\rVert = 0 \text{ or the denominator is } 0) \\
        g &\leftarrow \phi\,(g + \lambda\theta)

    (:math:`\eta` the trust coefficient, norms of the whole tensor); scalars and vectors (biases,
    norms' gains) keep their gradient: no weight decay, no scaling. Then SGD with momentum:

    .. math::
        b \leftarrow \mu b + (1-\tau) g, \qquad
        \theta \leftarrow \theta - \gamma\,(g + \mu b \text{ (Nesterov) or } b)

    State: ``momentum_buffer`` (b, when :math:`\mu > 0`). The step count is the group's
    ``step``. ``batched`` follows the oracle's ``foreach`` path (``torch._foreach_norm``).
    """
    if batched:  # the oracle's foreach path, its ops on one-tensor lists
        ps, gs = [param], [-grad] if maximize else [grad]
        if param.ndim > 1:
            param_norm, grad_norm = norm(param, True), norm(grad, True)
            denominator = grad_norm + weight_decay * param_norm
            trust_ratio = torch.where(
                param_norm > 0.0,
                torch.where(denominator > 0.0, trust_coefficient * param_norm / denominator, 1.0),
                1.0,
            )
            gs = torch._foreach_add(gs, ps, alpha=weight_decay)
            torch._foreach_mul_(gs, [trust_ratio])
        if momentum > 0.0:
            bufs = [state["momentum_buffer"]]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, gs, alpha=1.0 - dampening)
            gs = torch._foreach_add(gs, bufs, alpha=momentum) if nesterov else bufs
        add_scaled_update(param, gs[0], -lr)
        return

    # The oracle updates p.grad in place and steps with it. Where the gradient's layout is not
    # the parameter's (a contiguous gradient of a channels-last weight), the update must keep
    # the gradient's layout -- the final add rounds differently on other strides -- so work on a
    # copy of it; otherwise the out-of-place ops below give the same layout without a copy.
    if maximize:
        grad = -grad
    elif grad.stride() != param.stride():
        grad = grad.clone()
    own = maximize or grad is not param.grad  # may be written in place
    if param.ndim > 1:
        param_norm = norm(param, False)
        update_norm = norm(grad, False)
        one = torch.ones_like(param_norm)
        denominator = update_norm + weight_decay * param_norm
        trust_ratio = torch.where(
            param_norm > 0.0,
            torch.where(denominator > 0.0, (trust_coefficient * param_norm / denominator), one),
            one,
        )
        grad = grad.add_(param, alpha=weight_decay) if own else grad.add(param, alpha=weight_decay)
        grad.mul_(trust_ratio)
        own = True
    if momentum > 0.0:
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)
        if nesterov:
            grad = grad.add_(buf, alpha=momentum) if own else grad.add(buf, alpha=momentum)
        elif own:
            grad.copy_(buf)
        else:
            grad = buf
    param.add_(grad, alpha=-lr)


class LARS(Optimizer):
    r"""LARS, "Layer-wise Adaptive Rate Scaling": You, Gitman & Ginsburg, *Large Batch Training
    of Convolutional Networks* (arXiv:1708.03888, 2017), exactly as pytorch-optimizer's
    ``LARS`` (version 4.1.0).

    Each weight tensor's step is scaled by the trust ratio
    :math:`\eta \lVert\theta\rVert / (\lVert g\rVert + \lambda\lVert\theta\rVert)` (the paper's
    local learning rate, applied to :math:`g + \lambda\theta` before momentum, as in the
    paper's Algorithm 1); tensors of fewer than 2 dimensions take plain SGD steps (no decay,
    no scaling), as is usual for LARS. The norms are of the whole tensor: under FSDP2 the
    parameter, gradient and state are gathered for the step, so the result is the unsharded one.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): :math:`\gamma` (default: 1e-3).
        weight_decay (float): :math:`\lambda` (default: 0).
        momentum (float): :math:`\mu \in [0, 1)` (default: 0.9).
        dampening (float): :math:`\tau \in [0, 1)` (default: 0).
        trust_coefficient (float): :math:`\eta` (default: 1e-3).
        nesterov (bool): Nesterov momentum (default: False).
        foreach (bool or None): which of the oracle's code paths to follow: its batched one
            (None/True) or its per-tensor one (False); the numbers are the same on CPU.
        maximize (bool): maximize the objective.
        **kwargs: accepted and ignored by the oracle; refused here if given.

    State per parameter: ``momentum_buffer`` (with momentum); per group: ``step``. Unlike the
    oracle, ``step`` leaves ``p.grad`` as it was (the oracle updates it in place).
    """

    rule = lars_
    oracle = Oracle("pytorch_optimizer:LARS")
    lab_lr = 0.5
    configs = (
        {}, {"lr": 0.5, "weight_decay": 1e-2}, {"nesterov": True, "lr": 0.5, "trust_coefficient": 0.01},
        {"momentum": 0.0, "lr": 1.0, "maximize": True}, {"dampening": 0.1, "weight_decay": 0.1, "lr": 0.2},
        {"foreach": False, "weight_decay": 1e-2, "lr": torch.tensor(0.3)},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        dampening: float = 0.0,
        trust_coefficient: float = 1e-3,
        nesterov: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        **kwargs: Any,
    ) -> None:
        check_lr(lr)
        check_range(weight_decay, "weight_decay")
        check_range(momentum, "momentum", 1.0)
        check_range(dampening, "dampening", 1.0)
        check_range(trust_coefficient, "trust_coefficient")
        if kwargs:
            raise ValueError(f"LARS got unexpected option(s) {sorted(kwargs)} (the oracle ignores them)")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
            trust_coefficient=trust_coefficient, nesterov=nesterov, foreach=foreach, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Any = None) -> Any:
        """One step; each group counts its steps in ``group["step"]``, as the oracle's."""
        return step_counted(self, closure)

    def _step_group(self, group: dict[str, Any]) -> None:
        super()._step_group(group)
        if not self._batched(group):
            # The oracle's per-tensor path gives every parameter with a gradient a state
            # entry, empty without momentum.
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]  # noqa: B018

    @staticmethod
    def _batched(group: dict[str, Any]) -> bool:
        return group["foreach"] is not False and all_real_dense(group)

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return hyper_with(self.rule, group, {"batched": self._batched(group)})

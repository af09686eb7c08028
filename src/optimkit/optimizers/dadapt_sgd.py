r"""D-Adaptation SGD: SGD (dual averaging) whose step size :math:`d` is a lower bound on the
distance to the solution (Defazio & Mishchenko 2023)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ..rule import like, rule, zeros
from ._global import GroupTensors, Sums, local, run_step

__all__ = ["DAdaptSGD", "dadapt_sgd_"]

log = logging.getLogger(__name__)


def _copy(p: Tensor, group: dict[str, Any]) -> Tensor:
    return torch.clone(p).detach()


STATE = {"z": like(_copy), "s": zeros, "x0": like(_copy)}


@rule(state=STATE, complex=False, scope="group")
def dadapt_sgd_(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                group: dict[str, Any]) -> None:  # fmt: skip
    r"""One D-Adaptation SGD step of one parameter group, as the optimizer takes it when the
    group is its only one (:class:`DAdaptSGD` runs the same over all its groups at once).

    With :math:`\gamma` = ``lr``, :math:`c = 1 - \text{momentum}`, sums over every parameter,
    :math:`\|g_0\|` the first step's gradient norm and :math:`\eta = d\gamma/\|g_0\|`:

    .. math::
        g &\leftarrow g + \lambda x, \qquad
        r \leftarrow r + \eta \textstyle\sum \langle g, s\rangle, \qquad
        s \leftarrow s + \eta g \\
        \hat d &= 2 r / \sqrt{\textstyle\sum \|s\|_2^2}, \qquad
        d \leftarrow \max(d, \min(\hat d, d \cdot \text{growth\_rate})) \\
        z &\leftarrow x_0 - s, \qquad x \leftarrow (1-c)\, x + c\, z

    State: ``z``, ``s``, ``x0`` (:math:`x_0`, the start); the group keeps ``d``,
    ``numerator_weighted`` (:math:`r`), ``g0_norm`` and ``k`` (the step count)."""
    dadapt_sgd_step([GroupTensors(group, list(params), list(grads), list(states))], lambda: None)


def dadapt_sgd_step(parts: list[GroupTensors], open_states: Callable[[], None]) -> None:
    """D-Adaptation SGD over every group: the first pass sums over every parameter, then
    every group gets the same :math:`d`. The hyperparameters (``weight_decay`` and
    ``momentum`` too) come from the first group, as in the oracle
    (``dadaptation.DAdaptSGD.step``, whose op order this keeps)."""
    first, last = parts[0].group, parts[-1].group
    lr = max(part.group["lr"] for part in parts)
    decay, momentum, log_every, k = first["weight_decay"], first["momentum"], first["log_every"], first["k"]
    ck = 1 - momentum
    numerator_weighted, growth_rate, d = first["numerator_weighted"], first["growth_rate"], first["d"]
    fsdp_in_use = first["fsdp_in_use"] or any(hasattr(p, "_fsdp_flattened") for part in parts for p in part.params)
    if lr == 0.0:
        # Nothing can move (the oracle divides by zero here). torch.distributed.checkpoint
        # makes a fresh optimizer's state by such a step (zero gradients, lr=0): make it.
        open_states()
        return

    if k == 0:  # the first gradient's norm (without weight decay, as in the oracle)
        g_sq = Sums(0.0, all_ranks=fsdp_in_use)
        for part in parts:
            if part.group["lr"] > 0.0:
                for p, grad in zip(part.params, part.grads):
                    _, local_grad, _ = local(p, grad, {})
                    g_sq.add(p, (local_grad * local_grad).sum().item())
        last["g0_norm"] = math.sqrt(g_sq.total()[0])
        g0_norm = last["g0_norm"]
    else:
        g0_norm = first["g0_norm"]
    dlr = d * lr / g0_norm

    for part in parts:
        if part.group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for values of 0"
            )
    open_states()
    sums = Sums(numerator_weighted, 0.0, all_ranks=fsdp_in_use)  # numerator_weighted, sk_sq
    for part in parts:
        group_lr = part.group["lr"]
        for p, grad, state in zip(part.params, part.grads, part.states):
            if decay != 0:  # the first group's weight decay, for every group (the oracle adds it to p.grad)
                grad = grad.add(p, alpha=decay)
            if group_lr > 0.0:
                _, local_grad, local_state = local(p, grad, state)
                sums.add(p, *_accumulate(local_grad, local_state, dlr))
    numerator_weighted, sk_sq = sums.total()

    d_hat = 2 * numerator_weighted / math.sqrt(sk_sq)
    d = max(d, min(d_hat, d * growth_rate))
    if sk_sq == 0:
        return
    if log_every > 0 and k % log_every == 0:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        log.info(f"(r={rank},k={k}) dlr: {dlr} d_hat: {d_hat}, d: {d}. sk_norm={math.sqrt(sk_sq)} "
                 f"numerator_weighted={numerator_weighted} g0_norm={g0_norm}")  # fmt: skip

    for part in parts:
        group = part.group
        group["numerator_weighted"] = numerator_weighted
        group["d"] = d
        group["g0_norm"] = g0_norm
        for p, state in zip(part.params, part.states):
            p, _, state = local(p, p, state)
            state["z"].copy_(state["x0"] - state["s"])
            p.mul_(1 - ck).add_(state["z"], alpha=ck)
        group["k"] = k + 1


def _accumulate(grad: Tensor, state: dict[str, Any], dlr: float) -> tuple[float, float]:
    r"""One tensor's share of :math:`r` (before the update) and of :math:`\sum\|s\|_2^2`
    (after); ``s`` updated (elementwise, so a local shard will do)."""
    s = state["s"]
    numerator = dlr * torch.dot(grad.flatten(), s.flatten()).item()
    s.add_(grad, alpha=dlr)
    return numerator, (s * s).sum().item()


class DAdaptSGD(Optimizer):
    r"""D-Adaptation SGD: Defazio & Mishchenko, *Learning-Rate-Free Learning by
    D-Adaptation* (ICML 2023, arXiv:2301.07733), exactly as the authors'
    ``dadaptation.DAdaptSGD`` (3.2): same op order, state (``z``, ``s``, ``x0``) and group
    keys (``d``, ``numerator_weighted``, ``g0_norm``, ``k``; ``d`` a Python float). Dual
    averaging from the starting point with momentum as averaging; leave ``lr`` at 1 unless
    training is unstable.

    :math:`d` is one number for the optimizer: like the oracle, a step sums over *every*
    group and sets the same :math:`d` in each (``step`` is written over all groups, see
    :mod:`optimkit.optimizers._global`); its hyperparameters (also ``momentum`` and
    ``weight_decay``) are the first group's, and groups may set ``lr`` only to the others'
    value or to 0. A step with ``lr`` 0 everywhere changes nothing but creates the state
    (the oracle raises ``ZeroDivisionError``).

    Every tensor op is elementwise except the sums, so under FSDP2 and tensor parallelism
    (DTensor parameters) the state stays sharded like the parameters and only the sums are
    added up across ranks. ``fsdp_in_use`` is needed only where each rank holds other plain
    tensors (FSDP1, ``ZeroRedundancyOptimizer``): the sums are then added up over the
    default process group.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): multiplies the adapted step size :math:`d` (default: 1.0).
        momentum (float): momentum, in [0, 1) (default: 0).
        weight_decay (float): :math:`\lambda`, added to the gradient (default: 0).
        log_every (int): log :math:`d` (logger ``optimkit.optimizers.dadapt_sgd``, INFO)
            every ``log_every`` steps; 0: never (default: 0).
        d0 (float): the initial :math:`d` (default: 1e-6).
        growth_rate (float): the most :math:`d` grows per step, as a factor (default: inf).
        fsdp_in_use (bool): add the sums up over the default process group (default: False).
    """

    rule = dadapt_sgd_
    oracle = "dadaptation:DAdaptSGD"
    lab_lr = 1.0
    configs = (
        {},
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
        {"lr": 0.1, "momentum": 0.5, "growth_rate": 1.05, "d0": 1e-5, "log_every": 2},
    )

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.0, weight_decay: float = 0,
                 log_every: int = 0, d0: float = 1e-6, growth_rate: float = float("inf"),
                 fsdp_in_use: bool = False) -> None:  # fmt: skip
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, k=0, log_every=log_every,
                        numerator_weighted=0.0, d=d0, growth_rate=growth_rate, fsdp_in_use=fsdp_in_use,
                        # Set by the first step in the oracle; here from the start, so that a
                        # checkpoint template (torch.distributed.checkpoint) has it too.
                        g0_norm=0.0)  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One D-Adaptation SGD step over every parameter group (``closure`` re-evaluates the loss)."""
        return run_step(self, closure, dadapt_sgd_step, dadapt_sgd_.init_state)

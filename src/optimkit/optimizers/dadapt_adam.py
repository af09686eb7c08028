r"""D-Adaptation Adam: Adam whose step size :math:`d` is a lower bound on the distance to
the solution (Defazio & Mishchenko 2023)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ..rule import rule, scalar, zeros
from ._global import GroupTensors, Sums, local, run_step

__all__ = ["DAdaptAdam", "dadapt_adam_"]

log = logging.getLogger(__name__)

STATE = {"step": scalar(lambda p, group: 0), "s": zeros, "exp_avg": zeros, "exp_avg_sq": zeros}


@rule(state=STATE, complex=False, scope="group")
def dadapt_adam_(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]],
                 group: dict[str, Any]) -> None:  # fmt: skip
    r"""One D-Adaptation Adam step of one parameter group, as the optimizer takes it when the
    group is its only one (:class:`DAdaptAdam` runs the same over all its groups at once).

    With :math:`\gamma` = ``lr``, :math:`\rho` = the group's ``layer_scale``, sums over every
    parameter, :math:`\eta = d\gamma` (times Adam's bias correction if asked), :math:`v` before
    its update in :math:`r`:

    .. math::
        r &\leftarrow \sqrt{\beta_2}\, r + (1-\sqrt{\beta_2})
            \textstyle\sum \rho\,\eta\,\langle g, s / (\sqrt v + \epsilon)\rangle \\
        m &\leftarrow \beta_1 m + \rho\,\eta(1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \qquad
        s \leftarrow \sqrt{\beta_2}\, s + \eta(1-\sqrt{\beta_2}) g \\
        \hat d &= r / ((1-\sqrt{\beta_2}) \textstyle\sum \rho \|s\|_1), \qquad
        d \leftarrow \max(d, \min(\hat d, d \cdot \text{growth\_rate})) \\
        x &\leftarrow x - \eta\lambda x - m / (\sqrt v + \epsilon)

    with weight decay :math:`g \leftarrow g + \lambda x` first instead unless ``decouple``.
    State: ``step``, ``s``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`); the group
    keeps ``d``, ``numerator_weighted`` (:math:`r`) and ``k`` (the step count)."""
    dadapt_adam_step([GroupTensors(group, list(params), list(grads), list(states))], lambda: None)


def dadapt_adam_step(parts: list[GroupTensors], open_states: Callable[[], None]) -> None:
    """D-Adaptation Adam over every group: the first pass sums over every parameter, then
    every group gets the same :math:`d`. The hyperparameters of :math:`d` come from the first
    group, as in the oracle (``dadaptation.DAdaptAdam.step``, whose op order this keeps)."""
    first = parts[0].group
    use_bias_correction = first["use_bias_correction"]
    numerator_weighted = first["numerator_weighted"]
    beta1, beta2 = first["betas"]
    k, d = first["k"], first["d"]
    lr = max(part.group["lr"] for part in parts)
    bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if use_bias_correction else 1
    dlr = d * lr * bias_correction
    growth_rate, decouple, log_every = first["growth_rate"], first["decouple"], first["log_every"]
    fsdp_in_use = first["fsdp_in_use"] or any(hasattr(p, "_fsdp_flattened") for part in parts for p in part.params)
    sqrt_beta2 = beta2 ** (0.5)
    for part in parts:
        if part.group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups "
                "is only supported for values of 0. To scale the learning "
                "rate differently for each layer, set the 'layer_scale' value instead."
            )
    open_states()

    sums = Sums(0.0, 0.0, all_ranks=fsdp_in_use)  # numerator_acum, sk_l1
    for part in parts:
        group = part.group
        decay, eps, group_lr, r = group["weight_decay"], group["eps"], group["lr"], group["layer_scale"]
        for p, grad, state in zip(part.params, part.grads, part.states):
            if decay != 0 and not decouple:  # coupled weight decay (the oracle adds it to p.grad)
                grad = grad.add(p, alpha=decay)
            if group_lr > 0.0:
                _, local_grad, local_state = local(p, grad, state)
                sums.add(p, *_moments(local_grad, local_state, r=r, dlr=dlr, eps=eps, beta1=beta1,
                                      beta2=beta2, sqrt_beta2=sqrt_beta2))  # fmt: skip
    numerator_acum, sk_l1 = sums.total()

    numerator_weighted = sqrt_beta2 * numerator_weighted + (1 - sqrt_beta2) * numerator_acum
    d_hat = d
    if sk_l1 == 0:  # no gradient yet: nothing moves, d stays
        return
    d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
    d = max(d, min(d_hat, d * growth_rate))
    if log_every > 0 and k % log_every == 0:
        log.info(f"lr: {lr} dlr: {dlr} d_hat: {d_hat}, d: {d}. sk_l1={sk_l1:1.1e} "
                 f"numerator_weighted={numerator_weighted:1.1e}")  # fmt: skip

    for part in parts:
        group = part.group
        group["numerator_weighted"] = numerator_weighted
        group["d"] = d
        decay, k, eps = group["weight_decay"], group["k"], group["eps"]
        for p, state in zip(part.params, part.states):
            state["step"] += 1  # a number in the state itself (local() gives the shards in another dict)
            p, _, state = local(p, p, state)
            denom = state["exp_avg_sq"].sqrt().add_(eps)
            if decay != 0 and decouple:
                p.add_(p, alpha=-decay * dlr)
            p.addcdiv_(state["exp_avg"], denom, value=-1)
        group["k"] = k + 1


def _moments(grad: Tensor, state: dict[str, Any], *, r: float, dlr: float, eps: float, beta1: float,
             beta2: float, sqrt_beta2: float) -> tuple[float, float]:  # fmt: skip
    r"""One tensor's share of :math:`r` (before the update) and of :math:`\sum\rho\|s\|_1`
    (after); Adam's moments and ``s`` updated (elementwise, so a local shard will do)."""
    s, exp_avg, exp_avg_sq = state["s"], state["exp_avg"], state["exp_avg_sq"]
    denom = exp_avg_sq.sqrt().add_(eps)
    numerator = r * dlr * torch.dot(grad.flatten(), s.div(denom).flatten()).item()
    exp_avg.mul_(beta1).add_(grad, alpha=r * dlr * (1 - beta1))
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    s.mul_(sqrt_beta2).add_(grad, alpha=dlr * (1 - sqrt_beta2))
    return numerator, r * s.abs().sum().item()


class DAdaptAdam(Optimizer):
    r"""D-Adaptation Adam: Defazio & Mishchenko, *Learning-Rate-Free Learning by
    D-Adaptation* (ICML 2023, arXiv:2301.07733), exactly as the authors'
    ``dadaptation.DAdaptAdam`` (3.2): same op order, state (``step``, ``s``, ``exp_avg``,
    ``exp_avg_sq``) and group keys (``d``, ``numerator_weighted``, ``k``, ``layer_scale``;
    ``d`` a Python float). Leave ``lr`` at 1 unless training is unstable; to scale one
    group's step, set its ``layer_scale`` (default 1.0).

    :math:`d` is one number for the optimizer: like the oracle, a step sums over *every*
    group and sets the same :math:`d` in each (``step`` is written over all groups, see
    :mod:`optimkit.optimizers._global`); its hyperparameters (``betas``, ``growth_rate``,
    ``decouple``, ``use_bias_correction``) are the first group's, and groups may set ``lr``
    only to the others' value or to 0.

    Every tensor op is elementwise except the sums, so under FSDP2 and tensor parallelism
    (DTensor parameters) the state stays sharded like the parameters and only the two sums
    are added up across ranks. ``fsdp_in_use`` is needed only where each rank holds other
    plain tensors (FSDP1, ``ZeroRedundancyOptimizer``): the sums are then added up over the
    default process group.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): multiplies the adapted step size :math:`d` (default: 1.0).
        betas (tuple of floats): Adam's :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): added to :math:`\sqrt v` (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        log_every (int): log :math:`d` (logger ``optimkit.optimizers.dadapt_adam``, INFO)
            every ``log_every`` steps; 0: never (default: 0).
        decouple (bool): AdamW-style decoupled weight decay (default: False).
        use_bias_correction (bool): Adam's bias correction in the step size (default: False).
        d0 (float): the initial :math:`d` (default: 1e-6).
        growth_rate (float): the most :math:`d` grows per step, as a factor (default: inf).
        fsdp_in_use (bool): add the sums up over the default process group (default: False).
    """

    rule = dadapt_adam_
    oracle = "dadaptation:DAdaptAdam"
    lab_lr = 1.0
    configs = (
        {},
        {"lr": 0.1, "weight_decay": 0.01, "decouple": True},
        {"lr": 0.1, "weight_decay": 0.01, "use_bias_correction": True, "growth_rate": 1.05},
        {"lr": 0.1, "betas": (0.8, 0.99), "eps": 1e-6, "d0": 1e-5, "log_every": 2},
    )

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, log_every: int = 0, decouple: bool = False,
                 use_bias_correction: bool = False, d0: float = 1e-6, growth_rate: float = float("inf"),
                 fsdp_in_use: bool = False) -> None:  # fmt: skip
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, d=d0, k=0, layer_scale=1.0,
                        numerator_weighted=0.0, log_every=log_every, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple,
                        fsdp_in_use=fsdp_in_use)  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One D-Adaptation Adam step over every parameter group (``closure`` re-evaluates the loss)."""
        return run_step(self, closure, dadapt_adam_step, dadapt_adam_.init_state)

r"""Prodigy: Adam whose step size :math:`d` estimates the distance to the solution
(Mishchenko & Defazio 2023)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..execution import sharded
from ..optimizer import Optimizer
from ..rule import other, rule, scalar, when, zeros
from ._global import GroupTensors, Sums, local, run_step

__all__ = ["Prodigy", "prodigy_"]


def _p0(p: Tensor, group: dict[str, Any]) -> Tensor:
    """The starting point (every ``slice_p``-th element, flattened); a 0-dim zero where the
    parameter starts at zero (the oracle saves the memory)."""
    if p.any():
        return p.flatten()[:: group["slice_p"]].detach().clone()
    return torch.tensor(0, device=p.device, dtype=p.dtype)


STATE = {
    "step": scalar(lambda p, group: 0),
    "s": other(lambda p, group: torch.zeros_like(p.flatten()[:: group["slice_p"]])),
    "p0": other(_p0),
    "exp_avg": when(lambda p, group: group["betas"][0] > 0, zeros),
    "exp_avg_sq": zeros,
}


@rule(state=STATE, complex=False, scope="group")
def prodigy_(params: list[Tensor], grads: list[Tensor], states: list[dict[str, Any]], group: dict[str, Any]) -> None:
    r"""One Prodigy step of one parameter group, as the optimizer takes it when the group is
    its only one (:class:`Prodigy` runs the same over all its groups at once).

    With :math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay``, :math:`s, p_0` over
    every ``slice_p``-th element, sums over every parameter, :math:`\beta_3 = \sqrt{\beta_2}`
    unless given, :math:`\eta = d\gamma` (times Adam's bias correction if asked):

    .. math::
        r &\leftarrow \beta_3 r + \tfrac{d}{d_0}\,\eta\,\langle g, p_0 - x\rangle \\
        m &\leftarrow \beta_1 m + d(1-\beta_1) g, \qquad
        v \leftarrow \beta_2 v + d^2(1-\beta_2) g^2 \\
        s &\leftarrow \beta_3 s + \tfrac{d}{d_0}\,\eta\, g
            \quad (\tfrac{d}{d_0}\, d\, g \text{ with safeguard\_warmup}) \\
        \hat d &= d_{coef}\, r / \|s\|_1, \quad d_{max} \leftarrow \max(d_{max}, \hat d), \quad
        d \leftarrow \min(d_{max}, d \cdot \text{growth\_rate})
            \quad (\text{first } d \leftarrow \max(d, \hat d) \text{ while } d = d_0) \\
        x &\leftarrow x - \eta\lambda x - \eta\, m / (\sqrt v + d\epsilon)
            \quad (g / \ldots \text{ scaled by } \eta d \text{ when } \beta_1 = 0)

    with coupled weight decay (``decouple=False``) :math:`g \leftarrow g + \lambda x` first
    instead. State: ``step``, ``s``, ``p0``, ``exp_avg`` (:math:`m`, unless :math:`\beta_1=0`),
    ``exp_avg_sq`` (:math:`v`); the group keeps ``d``, ``d_max``, ``d_numerator`` (:math:`r`),
    ``d_denom``, ``d_hat`` and ``k`` (the step count)."""
    states = list(states)
    prodigy_step([GroupTensors(group, list(params), list(grads), states)], lambda: None)


def prodigy_step(parts: list[GroupTensors], open_states: Callable[[], None]) -> None:
    """Prodigy over every group: the first pass sums over every parameter, then every group
    gets the same :math:`d`. The hyperparameters of :math:`d` come from the first group, as in
    the oracle (``prodigyopt.Prodigy.step``, whose op order this keeps)."""
    first = parts[0].group
    use_bias_correction = first["use_bias_correction"]
    beta1, beta2 = first["betas"]
    beta3 = first["beta3"]
    if beta3 is None:
        beta3 = math.sqrt(beta2)
    k, d, d_max, d_coef = first["k"], first["d"], first["d_max"], first["d_coef"]
    lr = max(part.group["lr"] for part in parts)
    bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if use_bias_correction else 1
    dlr = d * lr * bias_correction
    growth_rate, decouple = first["growth_rate"], first["decouple"]
    fsdp_in_use = first["fsdp_in_use"] or any(hasattr(p, "_fsdp_flattened") for part in parts for p in part.params)
    d_numerator = first["d_numerator"] * beta3
    for part in parts:
        if part.group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for values of 0"
            )
    open_states()

    sums = Sums(0.0, 0.0, all_ranks=fsdp_in_use)  # delta_numerator, d_denom
    for part in parts:
        group = part.group
        decay, group_lr, d0, slice_p = group["weight_decay"], group["lr"], group["d0"], group["slice_p"]
        for i, (p, grad, state) in enumerate(zip(part.params, part.grads, part.states)):
            if decay != 0 and not decouple:  # coupled weight decay (the oracle adds it to p.grad)
                grad = part.grads[i] = grad.add(p, alpha=decay)
            if group_lr > 0.0:
                if sharded.is_dtensor(p):  # s and p0 see the whole (flattened) tensor
                    whole_p, whole_g = p.full_tensor(), grad.redistribute(p.device_mesh, p.placements).full_tensor()
                else:
                    whole_p, whole_g = p, grad
                numerator, denom = _distance(whole_p, whole_g, state, d, d0, dlr, beta3, slice_p,
                                             group["safeguard_warmup"])  # fmt: skip
                _, local_grad, local_state = local(p, grad, state)
                _moments(local_grad, local_state, d, beta1, beta2)
                sums.add(None if sharded.is_dtensor(p) else p, numerator, denom)
    delta_numerator, d_denom = sums.total()

    d_hat = d
    if d_denom == 0:  # no gradient yet: nothing moves, d stays
        return
    global_d_numerator = d_numerator + delta_numerator
    global_d_denom = d_denom
    d_hat = d_coef * global_d_numerator / global_d_denom
    if d == parts[-1].group["d0"]:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    d = min(d_max, d * growth_rate)

    for part in parts:
        group = part.group
        group.update(d_numerator=global_d_numerator, d_denom=global_d_denom, d=d, d_max=d_max, d_hat=d_hat)
        decay, k, eps = group["weight_decay"], group["k"], group["eps"]
        for p, grad, state in zip(part.params, part.grads, part.states):
            state["step"] += 1  # a number in the state itself (local() gives the shards in another dict)
            p, grad, state = local(p, grad, state)
            _update(p, grad, state, dlr=dlr, d=d, eps=eps, decay=decay if decouple else 0, beta1=beta1)
        group["k"] = k + 1


def _distance(p: Tensor, grad: Tensor, state: dict[str, Any], d: float, d0: float, dlr: float, beta3: float,
              slice_p: int, safeguard_warmup: bool) -> tuple[float, float]:  # fmt: skip
    r"""One tensor's share of :math:`r` and of :math:`\|s\|_1` (whole tensors), ``s`` updated."""
    s, p0 = state["s"], state["p0"]
    sliced_grad = grad.flatten()[::slice_p]
    numerator = (d / d0) * dlr * torch.dot(sliced_grad, p0 - p.flatten()[::slice_p]).item()
    s.mul_(beta3).add_(sliced_grad, alpha=((d / d0) * d) if safeguard_warmup else ((d / d0) * dlr))
    return numerator, s.abs().sum().item()


def _moments(grad: Tensor, state: dict[str, Any], d: float, beta1: float, beta2: float) -> None:
    """Adam's moments, with the gradient scaled by :math:`d` (elementwise)."""
    if beta1 > 0:
        state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))


def _update(p: Tensor, grad: Tensor, state: dict[str, Any], *, dlr: float, d: float, eps: float, decay: float,
            beta1: float) -> None:  # fmt: skip
    """The parameter's step (elementwise), with decoupled weight decay ``decay``."""
    denom = state["exp_avg_sq"].sqrt().add_(d * eps)
    if decay != 0:
        p.add_(p, alpha=-decay * dlr)
    if beta1 > 0:
        p.addcdiv_(state["exp_avg"], denom, value=-dlr)
    else:
        p.addcdiv_(grad, denom, value=-dlr * d)


class Prodigy(Optimizer):
    r"""Prodigy: Mishchenko & Defazio, *Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner* (ICML 2024, arXiv:2306.06101), exactly as the authors' ``prodigyopt.Prodigy``
    (1.1.2): same op order, state (``step``, ``s``, ``p0``, ``exp_avg``, ``exp_avg_sq``) and
    group keys (``d``, ``d_max``, ``d_numerator``, ``d_denom``, ``d_hat``, ``k``; ``d`` a
    Python float). Adam whose step size :math:`d` grows to an estimate of the distance from
    the start to the solution: leave ``lr`` at 1 unless training is unstable.

    :math:`d` is one number for the optimizer: like the oracle, a step sums over *every*
    group and sets the same :math:`d` in each (``step`` is written over all groups, see
    :mod:`optimkit.optimizers._global`); its hyperparameters (``betas``, ``beta3``, ``d_coef``,
    ``growth_rate``, ``decouple``, ``use_bias_correction``) are the first group's, and
    groups may set ``lr`` only to the others' value or to 0.

    Sums are global under FSDP2 and tensor parallelism (DTensor parameters): ``s`` and
    ``p0`` are flat, so they are kept whole on every rank and computed from the gathered
    parameter and gradient; the moments stay sharded like the parameter. ``fsdp_in_use`` is
    needed only where each rank holds other plain tensors (FSDP1, ``ZeroRedundancyOptimizer``):
    the sums are then added up over the default process group.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): multiplies the adapted step size :math:`d` (default: 1.0).
        betas (tuple of floats): Adam's :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        beta3 (float): the decay of :math:`r` and :math:`s` (default: None, :math:`\sqrt{\beta_2}`).
        eps (float): added to :math:`\sqrt v` (times :math:`d`) (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        decouple (bool): AdamW-style decoupled weight decay (default: True).
        use_bias_correction (bool): Adam's bias correction in the step size (default: False).
        safeguard_warmup (bool): leave ``lr`` out of :math:`s` (warm-up schedules) (default: False).
        d0 (float): the initial :math:`d` (default: 1e-6).
        d_coef (float): multiplies the estimate :math:`\hat d` (default: 1.0).
        growth_rate (float): the most :math:`d` grows per step, as a factor (default: inf).
        fsdp_in_use (bool): add the sums up over the default process group (default: False).
        slice_p (int): ``s`` and ``p0`` keep every ``slice_p``-th element (default: 1).
    """

    rule = prodigy_
    oracle = "prodigyopt:Prodigy"
    lab_lr = 1.0
    configs = (
        {},
        {"lr": 0.1, "weight_decay": 0.01},
        {"lr": 0.1, "weight_decay": 0.01, "decouple": False, "use_bias_correction": True},
        {"lr": 0.1, "betas": (0.0, 0.99), "safeguard_warmup": True, "d_coef": 0.5, "growth_rate": 1.02},
        {"lr": 0.1, "beta3": 0.9, "d0": 1e-5, "slice_p": 3},
    )

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False, d0: float = 1e-6,
                 d_coef: float = 1.0, growth_rate: float = float("inf"), fsdp_in_use: bool = False,
                 slice_p: int = 1) -> None:  # fmt: skip
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                        d=d0, d0=d0, d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple,
                        safeguard_warmup=safeguard_warmup, fsdp_in_use=fsdp_in_use, slice_p=slice_p,
                        # Written by every step in the oracle; here from the start, so that a
                        # checkpoint template (torch.distributed.checkpoint) has them too.
                        d_denom=0.0, d_hat=d0)  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Prodigy step over every parameter group (``closure`` re-evaluates the loss)."""
        return run_step(self, closure, prodigy_step, self._init_state)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        # Whether exp_avg exists is the first group's beta1, as everything about d.
        group = {**group, "betas": self.param_groups[0]["betas"]}
        if not sharded.is_dtensor(p):
            return prodigy_.init_state(p, group)
        state = prodigy_.init_state(p.full_tensor(), group)  # s and p0 whole; the moments sharded
        return {k: sharded.shard_like(v, p) if prodigy_.state[k].kind == "param" else v for k, v in state.items()}

    def _cast_state(self, param: Tensor, value: Any, group: dict[str, Any], key: Any = None) -> Any:
        if key in ("s", "p0") and isinstance(value, Tensor):  # whole on every rank, never sharded
            if sharded.is_dtensor(value):
                value = value.full_tensor()
            return value.to(dtype=param.dtype, device=param.device, copy=True)
        return super()._cast_state(param, value, group, key)

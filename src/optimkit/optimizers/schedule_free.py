r"""Schedule-Free AdamW, SGD and RAdam (Defazio et al. 2024, *The Road Less Scheduled*).

No learning-rate schedule: the iterate the gradient is taken at, :math:`y`, interpolates
between a plain (SGD or Adam) sequence :math:`z` and the running average :math:`x` of it,

.. math::
    y_t = (1-\beta_1) z_t + \beta_1 x_t, \qquad
    z_{t+1} = z_t - \gamma_t\, d_t(y_t), \qquad
    x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}, \qquad
    c_{t+1} = \frac{w_{t+1}}{\sum_{i \le t+1} w_i}, \quad w_t = t^r \gamma_{\max,t}^{p}

(:math:`d_t` the optimizer's direction, :math:`p` ``weight_lr_power``). Training steps at
:math:`y`; evaluation belongs at :math:`x`. So these optimizers have ``train()`` and ``eval()``
(as the authors' ``schedulefree`` package): ``eval()`` puts :math:`x` into the parameters,
``train()`` puts :math:`y` back. The mode is the group key ``train_mode``, part of the state dict.

The counters the average needs (``k``, ``weight_sum``, ``lr_max``, ``scheduled_lr``) are
group-wide numbers kept in each parameter group, as the authors keep them; the class computes
them once per group and step, exactly as the authors' code does (Python floats, same
expressions), and passes the results (:math:`\gamma_t`, :math:`c_{t+1}`, ...) to an elementwise
rule -- which therefore runs packed, chunked, compiled and on FSDP2's local shards.

Op order is the authors', with two spellings that give the same bits: ``z.sub_(g, alpha=a)``
is written ``z.add_(g, alpha=-a)`` (torch computes ``sub`` as ``add`` of ``-alpha``), and the
gradient is never changed in place (the authors add the weight decay into ``p.grad``) -- both
so that ``compile=True`` takes every number as it changes rather than baking it in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..ops import add_scaled, select, taken
from ..optimizer import Optimizer, Oracle
from ..rule import like, rule, zeros
from ._checks import check_betas, check_lr, check_nonneg

__all__ = [
    "ScheduleFreeAdamW", "ScheduleFreeSGD", "ScheduleFreeRAdam",
    "adamw_schedulefree_", "sgd_schedulefree_", "radam_schedulefree_",
]  # fmt: skip

#: The authors' message (their step raises a bare ``Exception``; ours a ``RuntimeError``).
EVAL_MODE_ERROR = (
    "Optimizer was not in train mode when step is called. "
    "Please insert .train() and .eval() calls on the "
    "optimizer. See documentation for details."
)


def _copy_of_param(p: Tensor, group: dict[str, Any]) -> Tensor:
    return torch.clone(p, memory_format=torch.preserve_format)


#: A state entry that starts as a copy of the parameter (z, x, y all start at the initial point).
copy_of_param = like(_copy_of_param)


# ---------------------------------------------------------------------------------- the rules
@rule(state={"z": copy_of_param, "exp_avg_sq": zeros, "x": copy_of_param, "y": copy_of_param},
      elementwise=True, complex=False)  # fmt: skip
def adamw_schedulefree_(param: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Any, ckp1: Any,
                        bias_correction2: Any, betas: tuple[Any, Any], eps: float, weight_decay: Any,
                        decay_at_z: bool) -> None:  # fmt: skip
    r"""One Schedule-Free AdamW step (the reference form, keeping :math:`x` and :math:`y`), in
    ``schedulefree.AdamWScheduleFreeReference``'s op order.

    .. math::
        z &\leftarrow z - \gamma_t\lambda\, (z \text{ if decay\_at\_z else } y) \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        z &\leftarrow z - \gamma_t\, g / (\sqrt{v / (1-\beta_2^{t})} + \epsilon) \\
        x &\leftarrow (1-c_{t+1}) x + c_{t+1} z, \quad
        y \leftarrow \beta_1 x + (1-\beta_1) z, \quad \theta \leftarrow y

    :math:`\gamma_t` (``lr``, the warmed-up rate), :math:`c_{t+1}` (``ckp1``) and
    :math:`1-\beta_2^t` (``bias_correction2``) come from the class (group-wide numbers).
    State: ``z``, ``exp_avg_sq`` (v), ``x``, ``y``."""
    beta1, beta2 = betas
    z, exp_avg_sq, x, y = state["z"], state["exp_avg_sq"], state["x"], state["y"]
    if taken(weight_decay != 0):
        z.add_(z if decay_at_z else y, alpha=-(lr * weight_decay))
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
    z.addcdiv_(grad, denom, value=-lr)
    x.mul_(1 - ckp1).add_(z, alpha=ckp1)
    y.copy_(x.mul(beta1).add_(z, alpha=1 - beta1))
    param.copy_(y)


@rule(state={"z": copy_of_param, "x": copy_of_param, "y": copy_of_param}, elementwise=True, complex=False)
def sgd_schedulefree_(param: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Any, ckp1: Any,
                      momentum: Any, weight_decay: Any) -> None:  # fmt: skip
    r"""One Schedule-Free SGD step (the reference form, keeping :math:`x` and :math:`y`), in
    ``schedulefree.SGDScheduleFreeReference``'s op order.

    .. math::
        g &\leftarrow g + \lambda y, \quad z \leftarrow z - \gamma_t g \\
        x &\leftarrow (1-c_{t+1}) x + c_{t+1} z, \quad
        y \leftarrow \beta x + (1-\beta) z, \quad \theta \leftarrow y

    State: ``z``, ``x``, ``y``. (The authors add the decay into ``p.grad`` itself; here the
    gradient is left as it was.)"""
    z, x, y = state["z"], state["x"], state["y"]
    if taken(weight_decay != 0):
        grad = add_scaled(grad, y, weight_decay)
    z.add_(grad, alpha=-lr)
    x.mul_(1 - ckp1).add_(z, alpha=ckp1)
    y.copy_(x.mul(momentum).add_(z, alpha=1 - momentum))
    param.copy_(y)


@rule(state={"z": copy_of_param, "exp_avg_sq": zeros}, elementwise=True, complex=False)
def radam_schedulefree_(param: Tensor, grad: Tensor, state: dict[str, Any], *, lr: Any, ckp1: Any,
                        adaptive_y_lr: Any, bias_correction2: Any, rho_t: Any, betas: tuple[Any, Any],
                        eps: float, weight_decay: Any) -> None:  # fmt: skip
    r"""One Schedule-Free RAdam step on ``param`` = :math:`y` (in place; :math:`x` is not kept),
    in ``schedulefree.RAdamScheduleFree``'s op order.

    .. math::
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        d &\leftarrow g / (\sqrt{v/(1-\beta_2^t)} + \epsilon) \text{ once } \rho_t > 4,
            \text{ else } g \quad (\text{then } d \leftarrow d + \lambda y) \\
        y &\leftarrow y + c_{t+1}(z - y) + \gamma_t(\beta_1(1-c_{t+1}) - 1)\, d, \quad
        z \leftarrow z - \gamma_t d

    :math:`\gamma_t` is ``lr`` times RAdam's rectification (0 while :math:`\rho_t \le 4` in the
    silent SGD phase); ``rho_t`` is :math:`\rho_t`. State: ``z``, ``exp_avg_sq`` (v).
    (The authors normalize ``p.grad`` in place; here the gradient is left as it was.)"""
    beta1, beta2 = betas
    z, exp_avg_sq = state["z"], state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # Adam's step once rho_t > 4 (a host branch; under compile=True both, one kept).
    g = grad
    grad = select(rho_t > 4.0, lambda: g.div(exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)), lambda: g)
    if taken(weight_decay != 0):
        grad = add_scaled(grad, param, weight_decay)
    param.lerp_(z, ckp1)
    param.add_(grad, alpha=adaptive_y_lr)
    z.add_(grad, alpha=-lr)


# ---------------------------------------------------------------------------------- the classes
def _average_weight(group: dict[str, Any], lr: Any, step: int) -> tuple[Any, Any, Any]:
    """The authors' bookkeeping of the average, in their expressions: ``(lr_max, weight_sum,
    ckp1)`` after a step at rate ``lr`` (the step numbered ``step`` from 1)."""
    lr_max = max(lr, group["lr_max"])
    weight = (step ** group["r"]) * (lr_max ** group["weight_lr_power"])
    weight_sum = group["weight_sum"] + weight
    try:
        ckp1 = weight / weight_sum
    except ZeroDivisionError:
        ckp1 = 0
    return lr_max, weight_sum, ckp1


class _ScheduleFree(Optimizer):
    """What the three share: train()/eval(), the mode check, the group counters."""

    #: Which state entries ``train()`` / ``eval()`` copy into the parameter (``None``: RAdam's
    #: interpolation with ``z`` instead).
    _y_key: str | None = "y"
    _x_key: str | None = "x"

    def _schedule(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(group updates, rule hyperparameters)`` of this step, without changing the group."""
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Switch every group in train mode to evaluation: the parameters become :math:`x`
        (idempotent: a group already in eval mode is left alone)."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Switch every group in eval mode to training: the parameters become :math:`y`
        (idempotent)."""
        self._switch(train=True)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if bool(group["train_mode"]) == train:
                continue
            for p in group["params"]:
                # As the authors' (torch's defaultdict): every parameter of a switched group
                # gets a state entry, empty until its first step, so state dicts agree.
                state = self.state[p]
                self._move(p, state, group, train)
            group["train_mode"] = train

    def _move(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], train: bool) -> None:
        key = self._y_key if train else self._x_key
        if key in state:
            p.copy_(state[key])

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; the optimizer must be in train mode (see the class docstring)."""
        self._accelerator_graph_capture_health_check()
        if not self.param_groups[0]["train_mode"]:
            # Before any parameter has state, train() changes nothing but the flag: so a fresh
            # optimizer steps as torch's do; once there is an x to lose, stepping raises.
            if any(self.state.get(p) for group in self.param_groups for p in group["params"]):
                raise RuntimeError(EVAL_MODE_ERROR)
            self.train()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        # The counters advance once per group and step, with or without gradients (as the
        # authors'); the rule gets what they give (see _schedule). They are committed after
        # the parameters are stepped, so a step refused (a sparse gradient) changes nothing.
        updates, hyper = self._schedule(group)
        self._now = _floats(hyper)
        try:
            super()._step_group(group)
        finally:
            self._now = None
        group.update(updates)
        group["k"] = group["k"] + 1

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        return self._now


def _floats(hyper: dict[str, Any]) -> dict[str, Any]:
    """Integer numbers as floats (the same values in every op here: ``ckp1`` is the authors'
    ``0`` before the first weight, ``weight_decay`` their default ``0``), so that under
    ``compile=True`` a number turning from int to float does not recompile."""
    return {k: float(v) if type(v) is int else v for k, v in hyper.items()}


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW: Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, *The Road Less
    Scheduled* (NeurIPS 2024), as the authors' ``schedulefree.AdamWScheduleFreeReference``
    (the reference form: :math:`x` and :math:`y` kept in the state), bit for bit.

    Call ``train()`` before training and ``eval()`` before evaluating (or saving weights meant
    for use): the parameters are :math:`y` in train mode and the average :math:`x` in eval mode.
    The mode is each group's ``train_mode`` (part of the state dict); ``step()`` in eval mode
    raises, as the authors' does -- except before the first step, where there is nothing to
    switch: a fresh optimizer (``train_mode=False``, as theirs) switches to train mode itself,
    so that torch-style loops run it unchanged. (The authors' reference prints a line when it
    switches; this one does not.)

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): :math:`\gamma` (default: 0.0025).
        betas (tuple of floats): :math:`\beta_1` (the interpolation between :math:`x` and
            :math:`z`) and :math:`\beta_2` (the second moment) (default: (0.9, 0.999)).
        eps (float): added to the denominator (default: 1e-8).
        weight_decay (float): decoupled weight decay :math:`\lambda`, taken at :math:`y`
            (default: 0).
        warmup_steps (int): linear warmup of the learning rate over this many steps (default: 0).
        r (float): polynomial weighting :math:`t^r` of the average (default: 0).
        weight_lr_power (float): the average's weights are :math:`\gamma_{\max}^p` (default: 2).
        decay_at_z (bool): take the weight decay at :math:`z` instead of :math:`y` (default: False).
        foreach (bool): ignored, as by the authors' reference.

    State per parameter: ``z``, ``exp_avg_sq``, ``x``, ``y``; per group: ``k`` (steps taken),
    ``weight_sum``, ``lr_max``, ``scheduled_lr``, ``train_mode``.
    """

    rule = adamw_schedulefree_
    oracle = Oracle("schedulefree:AdamWScheduleFreeReference", setup=("train",))
    lab_lr = 0.01
    configs = ({}, {"lr": 1e-3, "weight_decay": 0.1}, {"warmup_steps": 3, "r": 1.0, "weight_lr_power": 1.0},
               {"lr": 1e-3, "weight_decay": 0.05, "decay_at_z": True, "betas": (0.95, 0.99), "eps": 1e-6})  # fmt: skip

    def __init__(self, params: Any, lr: float | Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, warmup_steps: int = 0, r: float = 0,
                 weight_lr_power: float = 2, decay_at_z: bool = False, foreach: bool | None = False,
                 *, compile: bool = False) -> None:  # fmt: skip
        check_lr(lr)
        check_betas(betas)
        check_nonneg(eps, "epsilon value")
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, warmup_steps=warmup_steps, train_mode=False,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        decay_at_z=decay_at_z, weight_decay=weight_decay)  # fmt: skip
        super().__init__(params, defaults, compile=compile)

    def _schedule(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        beta1, beta2 = group["betas"]
        k, warmup_steps = group["k"], group["warmup_steps"]
        sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
        bias_correction2 = 1 - beta2 ** (k + 1)
        lr = group["lr"] * sched
        lr_max, weight_sum, ckp1 = _average_weight(group, lr, k + 1)
        hyper = dict(lr=lr, ckp1=ckp1, bias_correction2=bias_correction2, betas=group["betas"], eps=group["eps"],
                     weight_decay=group["weight_decay"], decay_at_z=group["decay_at_z"])  # fmt: skip
        return dict(scheduled_lr=lr, lr_max=lr_max, weight_sum=weight_sum), hyper


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD: Defazio et al., *The Road Less Scheduled* (NeurIPS 2024), as the
    authors' ``schedulefree.SGDScheduleFreeReference`` (:math:`x` and :math:`y` kept in the
    state), bit for bit.

    ``train()`` / ``eval()`` as :class:`ScheduleFreeAdamW`'s; this one starts in train mode,
    as the authors' does.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): :math:`\gamma` (default: 1.0).
        momentum (float): :math:`\beta`, the interpolation between :math:`x` and :math:`z`,
            in (0, 1) (default: 0.9).
        weight_decay (float): L2 penalty :math:`\lambda`, taken at :math:`y` (default: 0).
        warmup_steps (int): linear warmup of the learning rate (default: 0).
        r (float): polynomial weighting :math:`t^r` of the average (default: 0).
        weight_lr_power (float): the average's weights are :math:`\gamma_{\max}^p` (default: 2).
        foreach (bool): kept in the groups, changes nothing (as by the authors' reference).

    State per parameter: ``z``, ``x``, ``y``; per group: ``k``, ``weight_sum``, ``lr_max``,
    ``scheduled_lr``, ``train_mode``.
    """

    rule = sgd_schedulefree_
    oracle = "schedulefree:SGDScheduleFreeReference"
    lab_lr = 1.0
    configs = ({}, {"lr": 0.1, "weight_decay": 0.01}, {"lr": 0.05, "momentum": 0.5, "warmup_steps": 3},
               {"lr": 0.1, "r": 1.0, "weight_lr_power": 0.0})  # fmt: skip

    def __init__(self, params: Any, lr: float | Tensor = 1.0, momentum: float = 0.9, weight_decay: float = 0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2, foreach: bool | None = True,
                 *, compile: bool = False) -> None:  # fmt: skip
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if momentum <= 0 or momentum >= 1:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
        defaults = dict(lr=lr, momentum=momentum, r=r, k=0, warmup_steps=warmup_steps, train_mode=True,
                        weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0, weight_lr_power=weight_lr_power,
                        weight_decay=weight_decay, foreach=foreach)  # fmt: skip
        super().__init__(params, defaults, compile=compile)

    def _schedule(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        k, warmup_steps = group["k"], group["warmup_steps"]
        sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
        lr = group["lr"] * sched
        lr_max, weight_sum, ckp1 = _average_weight(group, lr, k + 1)
        hyper = dict(lr=lr, ckp1=ckp1, momentum=group["momentum"], weight_decay=group["weight_decay"])
        return dict(scheduled_lr=lr, lr_max=lr_max, weight_sum=weight_sum), hyper


class ScheduleFreeRAdam(_ScheduleFree):
    r"""Schedule-Free RAdam: Defazio et al., *The Road Less Scheduled* (NeurIPS 2024) with
    RAdam's rectification in place of a warmup, as the authors' ``schedulefree.RAdamScheduleFree``,
    bit for bit (their per-tensor loop; their ``foreach`` loop does the same ops).

    Only :math:`z` is kept: the parameters hold :math:`y` in train mode, and ``eval()`` /
    ``train()`` move them to :math:`x = y + (1-1/\beta_1)(z-y)` and back with ``lerp_``
    (so an eval/train round trip is exact only up to rounding, as the authors'). Starts in
    eval mode and switches itself at the first step, as :class:`ScheduleFreeAdamW`.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): :math:`\gamma` (default: 0.0025).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)); :math:`\beta_1 > 0`.
        eps (float): added to the denominator (default: 1e-8).
        weight_decay (float): L2 penalty :math:`\lambda`, taken at :math:`y` (default: 0).
        r (float): polynomial weighting :math:`t^r` of the average (default: 0).
        weight_lr_power (float): the average's weights are :math:`\gamma_{\max}^p` (default: 2).
        foreach (bool): kept in the groups, changes nothing here.
        silent_sgd_phase (bool): while :math:`\rho_t \le 4` (the first steps) do not move the
            parameters (default: True); False takes SGD steps there.

    State per parameter: ``z``, ``exp_avg_sq``; per group: ``k``, ``weight_sum``, ``lr_max``,
    ``scheduled_lr``, ``train_mode``.
    """

    rule = radam_schedulefree_
    oracle = Oracle("schedulefree:RAdamScheduleFree", setup=("train",))
    lab_lr = 0.01
    configs = ({}, {"lr": 1e-3, "weight_decay": 0.1}, {"silent_sgd_phase": False, "lr": 1e-3},
               {"betas": (0.8, 0.99), "r": 1.0, "weight_lr_power": 1.0, "eps": 1e-6})  # fmt: skip
    _y_key = _x_key = None

    def __init__(self, params: Any, lr: float | Tensor = 0.0025, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 foreach: bool | None = True, silent_sgd_phase: bool = True, *, compile: bool = False) -> None:  # fmt: skip
        check_lr(lr)
        check_betas(betas)
        if betas[0] == 0:
            raise ValueError("Invalid beta parameter at index 0: 0 (eval() divides by beta1)")
        check_nonneg(eps, "epsilon value")
        check_nonneg(weight_decay, "weight_decay value")
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0,
                        scheduled_lr=0.0, weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        foreach=foreach, silent_sgd_phase=silent_sgd_phase)  # fmt: skip
        super().__init__(params, defaults, compile=compile)

    def _move(self, p: Tensor, state: dict[str, Any], group: dict[str, Any], train: bool) -> None:
        if "z" in state:
            beta1 = group["betas"][0]
            p.lerp_(end=state["z"], weight=1 - beta1 if train else 1 - 1 / beta1)

    def _schedule(self, group: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        beta1, beta2 = group["betas"]
        step = group["k"] + 1
        beta2_t = beta2**step
        bias_correction2 = 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * beta2_t / bias_correction2
        rect = (
            ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            if rho_t > 4.0
            else float(not group["silent_sgd_phase"])
        )
        lr = group["lr"] * rect
        lr_max, weight_sum, ckp1 = _average_weight(group, lr, step)
        adaptive_y_lr = lr * (beta1 * (1 - ckp1) - 1)
        hyper = dict(lr=lr, ckp1=ckp1, adaptive_y_lr=adaptive_y_lr, bias_correction2=bias_correction2,
                     rho_t=rho_t, betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])  # fmt: skip
        return dict(scheduled_lr=lr, lr_max=lr_max, weight_sum=weight_sum), hyper

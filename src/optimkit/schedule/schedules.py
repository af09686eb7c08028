r"""Schedules as pure functions ``f(step) -> value``, and the one scheduler that applies them.

A schedule is a plain callable of the step index (0 for the first optimizer step), with no
state: ``f(500)`` is the same number whenever and however often it is asked. That makes
schedules easy to plot, test, compose (:func:`join`) and resume (only the step index needs
saving). They are closed forms: :func:`cosine` is
``end + (start - end) * (1 + cos(pi * t)) / 2`` evaluated at ``t``, not torch's recursive
``CosineAnnealingLR``, whose rounding drifts from this formula by up to ~2e-13 (relative)
over 1,000 steps; use :mod:`optimkit.lr_scheduler` for torch's exact numbers.

What torch lacks:

* :func:`warmup_cosine` -- linear warmup, then cosine decay to a floor (the LLM default);
* :func:`wsd` -- warmup-stable-decay (Hägele et al. 2024; Hu et al. 2024): constant at the
  peak, then a short cooldown -- ``"linear"``, ``"cosine"`` or ``"1-sqrt"``;
* :func:`inverse_sqrt` -- linear warmup, then ``peak * sqrt(timescale / (t + timescale))``
  (Vaswani et al. 2017);
* building blocks: :func:`constant`, :func:`linear`, :func:`cosine`, :func:`exponential`,
  :func:`join`.

Any schedule drives any hyperparameter through :class:`HyperparamScheduler` -- the lr,
``weight_decay``, ``momentum`` or ``beta1`` -- and a group's ``lr_scale`` (or
``<name>_scale``) scales what is written into it, e.g. for layer-wise lr decay::

    groups = [{"params": block.parameters(), "lr_scale": 0.8**depth} for depth, block in ...]
    opt = optimkit.AdamW(groups, lr=1e-3)
    sched = HyperparamScheduler(opt, {
        "lr": warmup_cosine(peak=1e-3, total_steps=10_000, warmup_steps=500),
        "weight_decay": linear(0.01, 0.1, 10_000),
        "beta1": cosine(0.85, 0.95, 10_000),
    })
    for batch in data:
        ...; opt.step(); sched.step()
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from .lr_scheduler import LRScheduler, _set_value, _take_over, _unscaled_lrs

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "cosine",
    "exponential",
    "warmup_cosine",
    "wsd",
    "inverse_sqrt",
    "join",
    "HyperparamScheduler",
]

COOLDOWNS = ("linear", "cosine", "1-sqrt")


def _progress(step: int, start: int, length: int) -> float:
    """Fraction of ``[start, start + length]`` done at ``step``, clamped to [0, 1]."""
    if length <= 0:
        return 1.0 if step >= start else 0.0
    return min(max((step - start) / length, 0.0), 1.0)


def _check_steps(**steps: int) -> None:
    for name, value in steps.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """Base of the schedule objects: callable, immutable, picklable, comparable."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{getattr(self, '_name', type(self).__name__)}({args})"


@dataclass(frozen=True, repr=False)
class _Constant(Schedule):
    value: float
    _name = "constant"

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True, repr=False)
class _Linear(Schedule):
    start: float
    end: float
    steps: int
    _name = "linear"

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * _progress(step, 0, self.steps)


@dataclass(frozen=True, repr=False)
class _Cosine(Schedule):
    start: float
    end: float
    steps: int
    _name = "cosine"

    def __call__(self, step: int) -> float:
        t = _progress(step, 0, self.steps)
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * t)) / 2.0


@dataclass(frozen=True, repr=False)
class _Exponential(Schedule):
    start: float
    end: float
    steps: int
    _name = "exponential"

    def __call__(self, step: int) -> float:
        return self.start * (self.end / self.start) ** _progress(step, 0, self.steps)


@dataclass(frozen=True, repr=False)
class _WarmupCosine(Schedule):
    peak: float
    total_steps: int
    warmup_steps: int
    final: float
    init: float
    _name = "warmup_cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init + (self.peak - self.init) * step / self.warmup_steps
        t = _progress(step, self.warmup_steps, self.total_steps - self.warmup_steps)
        return self.final + (self.peak - self.final) * (1.0 + math.cos(math.pi * t)) / 2.0


@dataclass(frozen=True, repr=False)
class _WSD(Schedule):
    peak: float
    total_steps: int
    warmup_steps: int
    decay_steps: int
    final: float
    init: float
    cooldown: str
    _name = "wsd"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init + (self.peak - self.init) * step / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return self.peak
        t = _progress(step, decay_start, self.decay_steps)
        if self.cooldown == "linear":
            shape = 1.0 - t
        elif self.cooldown == "cosine":
            shape = (1.0 + math.cos(math.pi * t)) / 2.0
        else:  # "1-sqrt"
            shape = 1.0 - math.sqrt(t)
        return self.final + (self.peak - self.final) * shape


@dataclass(frozen=True, repr=False)
class _InverseSqrt(Schedule):
    peak: float
    warmup_steps: int
    timescale: int
    init: float
    _name = "inverse_sqrt"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init + (self.peak - self.init) * step / self.warmup_steps
        return self.peak * math.sqrt(self.timescale / (step - self.warmup_steps + self.timescale))


@dataclass(frozen=True, repr=False)
class _Join(Schedule):
    schedules: tuple[Callable[[int], float], ...]
    boundaries: tuple[int, ...]
    _name = "join"

    def __call__(self, step: int) -> float:
        i = bisect_right(self.boundaries, step)
        offset = self.boundaries[i - 1] if i > 0 else 0
        return self.schedules[i](step - offset)


# ---------------------------------------------------------------------------------------------
# The public constructors
# ---------------------------------------------------------------------------------------------
def constant(value: float) -> Schedule:
    """``f(t) = value``."""
    return _Constant(value)


def linear(start: float, end: float, steps: int) -> Schedule:
    """From ``start`` at step 0 to ``end`` at step ``steps`` in a straight line; ``end`` after."""
    _check_steps(steps=steps)
    return _Linear(start, end, steps)


def cosine(start: float, end: float, steps: int) -> Schedule:
    """Half a cosine from ``start`` (step 0) to ``end`` (step ``steps``); ``end`` after.

    The closed form of torch's ``CosineAnnealingLR(T_max=steps, eta_min=end)`` over its first
    ``steps`` steps (torch's recursion rounds differently: ~1e-15 relative).
    """
    _check_steps(steps=steps)
    return _Cosine(start, end, steps)


def exponential(start: float, end: float, steps: int) -> Schedule:
    """Geometric from ``start`` to ``end`` over ``steps`` (straight on a log axis); ``end`` after.

    The LR range test's sweep. ``start`` and ``end`` must be positive.
    """
    _check_steps(steps=steps)
    if start <= 0 or end <= 0:
        raise ValueError(f"exponential needs positive start and end, got {start} and {end}")
    return _Exponential(start, end, steps)


def warmup_cosine(
    peak: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0, init: float = 0.0
) -> Schedule:
    """Linear warmup from ``init`` to ``peak`` over ``warmup_steps``, then cosine decay to
    ``final`` at ``total_steps``; ``final`` after.

    ``f(t) = init + (peak - init) t / W`` for ``t < W``, else
    ``final + (peak - final) (1 + cos(pi (t - W) / (T - W))) / 2``. With ``init=0`` the first
    step has lr 0, as in Hugging Face's ``get_cosine_schedule_with_warmup``.
    """
    _check_steps(total_steps=total_steps, warmup_steps=warmup_steps)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    return _WarmupCosine(peak, total_steps, warmup_steps, final, init)


def wsd(
    peak: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_fraction: float = 0.2,
    final: float = 0.0,
    init: float = 0.0,
    cooldown: str = "linear",
) -> Schedule:
    """Warmup-stable-decay: linear warmup to ``peak``, constant, then a cooldown to ``final``.

    The cooldown takes the last ``decay_steps`` steps (default ``round(decay_fraction *
    total_steps)``) and has the shape ``cooldown``: ``"linear"`` (``1 - t``), ``"cosine"``
    (``(1 + cos(pi t)) / 2``) or ``"1-sqrt"`` (``1 - sqrt(t)``, Hägele et al. 2024's best),
    with ``t`` going from 0 to 1 over the cooldown.
    """
    if cooldown not in COOLDOWNS:
        raise ValueError(f"cooldown must be one of {COOLDOWNS}, got {cooldown!r}")
    if decay_steps is None:
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
        decay_steps = round(decay_fraction * total_steps)
    _check_steps(total_steps=total_steps, warmup_steps=warmup_steps, decay_steps=decay_steps)
    if warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"warmup_steps + decay_steps ({warmup_steps} + {decay_steps}) must not exceed total_steps ({total_steps})"
        )
    return _WSD(peak, total_steps, warmup_steps, decay_steps, final, init, cooldown)


def inverse_sqrt(
    peak: float, warmup_steps: int = 0, timescale: int | None = None, init: float = 0.0
) -> Schedule:
    """Linear warmup to ``peak``, then decay as ``peak * sqrt(timescale / (t - W + timescale))``.

    ``timescale`` defaults to ``warmup_steps`` (at least 1), which gives the Transformer
    schedule ``peak * sqrt(W / t)`` after the warmup (fairseq's ``inverse_sqrt``).
    """
    _check_steps(warmup_steps=warmup_steps)
    if timescale is None:
        timescale = max(warmup_steps, 1)
    if not isinstance(timescale, int) or timescale <= 0:
        raise ValueError(f"timescale must be a positive integer, got {timescale!r}")
    return _InverseSqrt(peak, warmup_steps, timescale, init)


def join(schedules: Sequence[Callable[[int], float]], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]`` on, each seeing its step counted from 0."""
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join needs len(schedules) - 1 boundaries, got {len(schedules)} and {len(boundaries)}"
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"boundaries must be increasing, got {list(boundaries)}")
    return _Join(tuple(schedules), tuple(boundaries))


# ---------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------
ScheduleSpec = Callable[[int], float] | dict[str, Callable[[int], float] | Sequence[Callable[[int], float]]]


def _read(group: dict[str, Any], key: str) -> Any:
    if key == "beta1":
        return group["betas"][0]
    if key == "beta2":
        return group["betas"][1]
    if key == "momentum" and "momentum" not in group:
        return group["betas"][0]
    return group[key]


def _write(group: dict[str, Any], key: str, value: Any) -> None:
    if key in ("beta1", "beta2") or (key == "momentum" and "momentum" not in group):
        betas = list(group["betas"])
        betas[1 if key == "beta2" else 0] = value
        group["betas"] = tuple(betas)
    else:
        _set_value(group, key, value)


class HyperparamScheduler(LRScheduler):
    """Write schedule values into the param groups at every step: any hyperparameter, any schedule.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        schedules: a callable ``f(step) -> lr``, or a dict mapping a hyperparameter name to
            a callable (all groups) or to a list of callables (one per group). Names are
            group keys (``"lr"``, ``"weight_decay"``, ``"eps"``, ...) plus ``"beta1"`` and
            ``"beta2"`` (the entries of ``betas``) and ``"momentum"`` (``betas[0]`` for an
            optimizer without a ``momentum`` entry, as torch's ``CyclicLR`` does).
        last_epoch: as for every scheduler: ``-1`` starts at step 0; ``k`` resumes at ``k + 1``.

    The value written into a group is ``f(step)`` times the group's ``<name>_scale`` entry if
    it has one -- ``lr_scale`` for the lr (layer-wise lr decay), ``weight_decay_scale``... .
    Values are absolute: ``f`` returns the lr itself, not a factor (use ``LambdaLR`` for
    factors). The state dict holds the step count only; the schedules are code, given again
    when the scheduler is rebuilt.
    """

    _not_state = (*LRScheduler._not_state, "_schedules")

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedules: ScheduleSpec, last_epoch: int = -1
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if callable(schedules):
            schedules = {"lr": schedules}
        if not isinstance(schedules, dict) or not schedules:
            raise TypeError(
                "schedules must be a callable or a non-empty dict of hyperparameter name -> schedule"
            )
        groups = optimizer.param_groups
        per_group: dict[str, list[Callable[[int], float]]] = {}
        for key, spec in schedules.items():
            fns = list(spec) if isinstance(spec, (list, tuple)) else [spec] * len(groups)
            if len(fns) != len(groups):
                raise ValueError(f"schedules[{key!r}] has {len(fns)} entries for {len(groups)} param groups")
            for i, (fn, group) in enumerate(zip(fns, groups)):
                if not callable(fn):
                    raise TypeError(f"schedules[{key!r}] for group {i} is not callable: {fn!r}")
                try:
                    _read(group, key)
                except (KeyError, IndexError, TypeError):
                    raise ValueError(
                        f"param group {i} has no hyperparameter {key!r} "
                        f"(it has {sorted(k for k in group if k != 'params')})"
                    ) from None
            per_group[key] = fns
        self._schedules = per_group
        for group in groups:  # the schedules are absolute: resuming needs no initial_lr
            _take_over(group)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Any]:
        self._warn_if_outside_step()
        step = self.last_epoch
        for key, fns in self._schedules.items():
            if key == "lr":
                continue
            for group, fn in zip(self.optimizer.param_groups, fns):
                value = fn(step)
                scale = group.get(f"{key}_scale")
                _write(group, key, value if scale is None else value * scale)
        fns = self._schedules.get("lr")
        if fns is None:
            return _unscaled_lrs(self.optimizer)  # the lr is not scheduled: leave it
        return [fn(step) for fn in fns]

    def get_last_values(self) -> dict[str, list[Any]]:
        """The scheduled hyperparameters of every group as they are now (after scaling)."""
        return {key: [_read(g, key) for g in self.optimizer.param_groups] for key in self._schedules}

r"""Learning-rate schedulers: torch 2.13's ``torch.optim.lr_scheduler``, written again.

Every class here has torch's constructor signature and writes the *same numbers* into the
parameter groups, bit for bit: where torch's ``get_lr`` is recursive (it multiplies the
previous ``group["lr"]`` by a ratio) ours is recursive with the same floating-point
operations in the same order; where torch uses a closed form, so do we. State dicts have
torch's keys, so a torch scheduler's ``state_dict()`` loads into ours and vice versa.

The schedulers accept any ``torch.optim.Optimizer`` -- optimkit's or torch's -- and torch's
schedulers drive optimkit optimizers (they subclass ``torch.optim.Optimizer``).

**Recursive versus closed form.** torch's "chainable" schedulers (``CosineAnnealingLR``,
``LinearLR``, ``PolynomialLR``, ``ExponentialLR``, ``StepLR``, ``MultiStepLR``,
``ConstantLR``, ``MultiplicativeLR``) update the current lr instead of evaluating the schedule
at step ``t``, so that several of them can act on the same optimizer at once. The rounding
of the repeated multiplications makes the lrs drift from the closed form
``base_lr * f(t)`` by a few ulps: over 1,000 steps at most ~2e-13 relative for
``CosineAnnealingLR`` (largest after several periods, where the recursion re-grows the lr
from ``eta_min``), ~1.5e-14 for ``LinearLR``, ~3e-15 for ``PolynomialLR`` and
``ExponentialLR``, ~2e-16 for ``StepLR`` with ``gamma=0.1``. optimkit reproduces the
recursion, not the closed form. Passing ``epoch`` to ``step`` (deprecated in torch) uses the
closed form, as in torch. :mod:`optimkit.schedules` holds closed-form schedule functions.

**Per-group scaling.** A group holding ``lr_scale`` (layer-wise lr decay, a smaller lr for
a pretrained backbone, ...) receives ``lr_scale`` times the learning rate the schedule
computes for it. Schedules run on *unscaled* learning rates: ``initial_lr``, ``base_lrs``,
``eta_min``, ``max_lr``, ``min_lr``, ``swa_lr``... are unscaled. The first scheduler built on
a group records its lr as ``initial_lr`` and applies the scale; from then on
``group["lr"]`` holds the scaled value, and a recursive scheduler reads the previous lr back
as ``group["lr"] / lr_scale``. An lr the schedule leaves unchanged is not rewritten, so flat
phases do not drift; with a power-of-two scale the lrs are exactly ``lr_scale`` times the
unscaled ones, otherwise within a few ulps. Groups without ``lr_scale`` get torch's numbers
exactly. (torch's own schedulers ignore ``lr_scale``: do not mix them on scaled groups.)

**The step-order warning.** ``scheduler.step()`` before any ``optimizer.step()`` warns, as in
torch. optimkit optimizers count their steps (``_step_count``); for other optimizers a step
post-hook counts them (torch instead replaces ``optimizer.step`` by a wrapper).
"""

from __future__ import annotations

import math
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, SupportsFloat

import torch
from torch import Tensor

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "PolynomialLR",
]

_EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)
_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
_GET_LR_WARNING = "To get the last learning rate computed by the scheduler, please use `get_last_lr()`."

Number = float | Tensor


# ---------------------------------------------------------------------------------------------
# Group helpers: values without aliasing, lr_scale, optimizer-step counting
# ---------------------------------------------------------------------------------------------
def _copy_value(value: Any) -> Any:
    return value.clone() if isinstance(value, Tensor) else value


def _as_scalar(value: Any) -> Any:
    """A 1-element tensor as a 0-dim one (what ``Tensor.fill_`` takes); anything else as is."""
    if isinstance(value, Tensor) and value.dim() != 0:
        return value.squeeze()
    return value


def _per_group(name: str, optimizer: torch.optim.Optimizer, value: Any) -> list[Any]:
    """``value`` for every param group: a list/tuple must have one entry per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has {len(optimizer.param_groups)}."
            )
        values = list(value)
    else:
        values = [value] * len(optimizer.param_groups)
    return [_copy_value(v) for v in values]


def _group_values(optimizer: torch.optim.Optimizer, key: str) -> list[Any]:
    """``group[key]`` of every group (tensors copied, so nothing aliases the optimizer)."""
    return [_copy_value(group[key]) for group in optimizer.param_groups]


def _set_value(group: dict[str, Any], key: str, value: Any) -> None:
    """Write ``value`` into ``group[key]``; a tensor entry is filled in place."""
    if isinstance(group[key], Tensor):
        group[key].fill_(_as_scalar(value))
    else:
        group[key] = value


def _unscaled_lr(group: dict[str, Any]) -> Any:
    """The group's lr as the schedule sees it (``group["lr"] / group["lr_scale"]``).

    A group's lr is unscaled until a scheduler first takes it over (gives it an
    ``initial_lr``); from then on it holds ``lr_scale`` times the schedule's value.
    """
    lr = group["lr"]
    scale = group.get("lr_scale")
    if scale is None or "initial_lr" not in group:
        return _copy_value(lr)
    return lr / scale


def _unscaled_lrs(optimizer: torch.optim.Optimizer) -> list[Any]:
    return [_unscaled_lr(group) for group in optimizer.param_groups]


def _set_lr(group: dict[str, Any], lr: Any) -> None:
    """Write the schedule's (unscaled) ``lr`` into the group, times its ``lr_scale``."""
    scale = group.get("lr_scale")
    if scale is not None and "initial_lr" in group:
        unchanged = lr == group["lr"] / scale
        if isinstance(unchanged, Tensor):
            unchanged = bool(unchanged.all())
        if unchanged:  # keep the exact value: no x * s / s round trip in flat phases
            return
        lr = lr * scale
    _set_value(group, "lr", lr)


def _take_over(group: dict[str, Any]) -> None:
    """Start scheduling a group: record ``initial_lr`` (unscaled) and apply ``lr_scale``."""
    if "initial_lr" in group:
        return
    lr = group["lr"]
    group["initial_lr"] = _copy_value(lr)
    scale = group.get("lr_scale")
    if scale is not None:
        _set_value(group, "lr", lr * scale)


_STEP_COUNTER = "_optimkit_sched_step_count"
_STEP_HOOK = "_optimkit_sched_step_hook"


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    setattr(optimizer, _STEP_COUNTER, getattr(optimizer, _STEP_COUNTER, 0) + 1)


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> int | None:
    """How many ``step()`` calls the optimizer has completed, if that is known."""
    count = getattr(optimizer, "_step_count", None)  # optimkit optimizers count their steps
    if isinstance(count, int):
        return count
    return getattr(optimizer, _STEP_COUNTER, None)


def _track_optimizer_steps(optimizer: torch.optim.Optimizer) -> None:
    """Count the steps of an optimizer that does not count them itself (a step post-hook)."""
    if isinstance(getattr(optimizer, "_step_count", None), int) or hasattr(optimizer, _STEP_COUNTER):
        return
    if not hasattr(optimizer, "register_step_post_hook"):
        return
    setattr(optimizer, _STEP_COUNTER, 0)
    setattr(optimizer, _STEP_HOOK, optimizer.register_step_post_hook(_count_optimizer_step))


def _untrack_optimizer_steps(optimizer: torch.optim.Optimizer) -> None:
    """Remove what :func:`_track_optimizer_steps` added to ``optimizer``."""
    handle = optimizer.__dict__.pop(_STEP_HOOK, None)
    if handle is not None:
        handle.remove()
    optimizer.__dict__.pop(_STEP_COUNTER, None)


# ---------------------------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------------------------
class LRScheduler(torch.optim.lr_scheduler.LRScheduler):
    r"""Base class of optimkit's learning-rate schedulers (torch's ``LRScheduler`` protocol).

    It derives from torch's ``LRScheduler`` only so that ``isinstance`` checks in training
    frameworks pass; every method torch's base defines is defined here again, and none of
    torch's scheduler code runs (``tests/test_lr_scheduler.py`` checks this).

    Subclasses implement :meth:`get_lr` -- the next *unscaled* learning rate of every param
    group -- and may override :meth:`step`.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (optimkit's or torch's).
        last_epoch: index of the last epoch (step) seen. ``-1`` starts the schedule; a value
            ``k >= 0`` resumes it (the groups must then hold ``initial_lr``) and, as in torch,
            leaves the scheduler where ``k + 1`` calls of :meth:`step` would have.

    Constructing a scheduler writes the schedule's first lr into the groups (so construct it
    *before* loading an optimizer checkpoint).
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False
    #: Attributes that are not scheduler state: never in ``state_dict``.
    _not_state: tuple[str, ...] = ("optimizer", "_optimizer_steps_at_start")

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                _take_over(group)
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                        "scheduler with last_epoch >= 0.\nThis typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but haven't properly "
                        "loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run (not recommended)"
                    )
        self.base_lrs: list[Number] = _group_values(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _track_optimizer_steps(optimizer)
        self._initial_step()

    # -- the protocol -------------------------------------------------------------------------
    def _initial_step(self) -> None:
        """Reset the step count and take the construction step (writes the first lr)."""
        self._step_count = 0
        self._optimizer_steps_at_start = _optimizer_steps(self.optimizer)
        with self._initial_mode():
            self.step()

    @contextmanager
    def _initial_mode(self) -> Iterator[None]:
        self._is_initial = True
        try:
            yield
        finally:
            self._is_initial = False

    @contextmanager
    def _within_step(self) -> Iterator[None]:
        self._get_lr_called_within_step = True
        try:
            yield
        finally:
            self._get_lr_called_within_step = False

    def _warn_if_outside_step(self) -> None:
        if not self._get_lr_called_within_step:
            warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=3)

    def _check_step_order(self) -> None:
        """Warn at the first user call of ``step()`` if the optimizer has not stepped yet."""
        if self._step_count != 1:
            return
        start = self.__dict__.get("_optimizer_steps_at_start")
        now = _optimizer_steps(self.optimizer)
        if start is not None and now is not None and now <= start:
            warnings.warn(_ORDER_WARNING, UserWarning, stacklevel=3)

    def get_lr(self) -> list[Number]:
        """The next learning rate of every group (unscaled; :meth:`step` applies ``lr_scale``)."""
        raise NotImplementedError

    def get_last_lr(self) -> list[Number]:
        """The learning rates last written into the groups (copies, as in torch)."""
        return self._last_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule by one step (call it after ``optimizer.step()``).

        ``epoch`` (deprecated in torch) jumps to that epoch using the closed form where the
        scheduler has one.
        """
        self._check_step_order()
        self._step_count += 1
        if epoch is not None:
            warnings.warn(_EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        with self._within_step():
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(
                f"{type(self).__name__}.get_lr returned {len(values)} values for {len(groups)} groups"
            )
        for group, lr in zip(groups, values):
            _set_lr(group, lr)
        self._last_lr: list[Number] = _group_values(self.optimizer, "lr")

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: every attribute except the optimizer (torch's keys)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._not_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by this class or by torch's class of the same name."""
        self.__dict__.update(state_dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={getattr(self, 'last_epoch', None)})"


class _LRScheduler(LRScheduler):
    """Old name of :class:`LRScheduler`, kept as torch keeps it."""


# ---------------------------------------------------------------------------------------------
# Lambda schedulers
# ---------------------------------------------------------------------------------------------
def _lambdas(optimizer: torch.optim.Optimizer, lr_lambda: Any) -> list[Callable[[int], float]]:
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != len(optimizer.param_groups):
            raise ValueError(f"Expected {len(optimizer.param_groups)} lr_lambdas, but got {len(lr_lambda)}")
        return list(lr_lambda)
    return [lr_lambda] * len(optimizer.param_groups)


class _LambdaStateMixin:
    """State dicts of lambda schedulers: functions are not saved, callable objects' ``__dict__`` is."""

    lr_lambdas: list[Callable[[int], float]]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in (*self._not_state, "lr_lambdas")}
        state["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy() for fn in self.lr_lambdas
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.pop("lr_lambdas")
        try:
            self.__dict__.update(state_dict)
        finally:
            state_dict["lr_lambdas"] = saved  # leave the caller's dict as it was
        for fn, fn_state in zip(self.lr_lambdas, saved):
            if fn_state is not None:
                fn.__dict__.update(fn_state)


class LambdaLR(_LambdaStateMixin, LRScheduler):
    """``lr = initial_lr * lr_lambda(epoch)`` (closed form, one lambda or one per group).

    Any :mod:`optimkit.schedules` function divided by its peak makes a ``lr_lambda``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        self.lr_lambdas = _lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaStateMixin, LRScheduler):
    """``lr = lr * lr_lambda(epoch)`` at every step after the first (recursive, as in torch)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        self.lr_lambdas = _lambdas(optimizer, lr_lambda)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        return [lr * fn(self.last_epoch) for fn, lr in zip(self.lr_lambdas, lrs)]


# ---------------------------------------------------------------------------------------------
# Step-wise decays
# ---------------------------------------------------------------------------------------------
class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs (recursive: ``lr * gamma``).

    The recursion differs from the closed form ``base_lr * gamma ** (epoch // step_size)``
    by an ulp or so once ``gamma`` is not a power of two.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lrs
        return [lr * self.gamma for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone (``gamma ** n`` for a milestone listed n times)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self.last_epoch not in self.milestones:
            return lrs
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [lr * factor for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        milestones = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect_right(milestones, self.last_epoch) for base in self.base_lrs]


class ConstantLR(LRScheduler):
    """Multiply the lr by ``factor`` until epoch ``total_iters``, then divide it back out.

    Recursive as in torch: at ``total_iters`` the lr is multiplied by ``1.0 / factor``, which
    need not restore ``initial_lr`` exactly.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self.last_epoch == 0:
            return [lr * self.factor for lr in lrs]
        if self.last_epoch != self.total_iters:
            return lrs
        return [lr * (1.0 / self.factor) for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [
            base * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
            for base in self.base_lrs
        ]


class LinearLR(LRScheduler):
    r"""Scale the lr by a factor moving linearly from ``start_factor`` to ``end_factor``.

    Recursive as in torch: at epoch ``t`` the lr is multiplied by
    ``1 + (end - start) / (total_iters * start + (t - 1) * (end - start))``, the ratio of
    consecutive closed-form factors. Over 1,000 steps this drifts up to ~1.5e-14 (relative)
    from ``base_lr * (start + (end - start) * min(t, total_iters) / total_iters)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        span = self.end_factor - self.start_factor
        ratio = 1.0 + span / (self.total_iters * self.start_factor + (self.last_epoch - 1) * span)
        return [lr * ratio for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [
            base
            * (
                self.start_factor
                + (self.end_factor - self.start_factor)
                * min(self.total_iters, self.last_epoch)
                / self.total_iters
            )
            for base in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every epoch (recursive: differs from ``base_lr * gamma**t``
    by up to ~3e-15 relative over 1,000 steps)."""

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self._is_initial:  # resuming: do not move one step ahead of the checkpoint
            return lrs
        return [lr * self.gamma for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    r"""Decay the lr as ``base_lr * (1 - t / total_iters) ** power``, reached recursively.

    Each step multiplies the lr by ``((1 - t/T) / (1 - (t-1)/T)) ** power`` as torch does
    (drift from the closed form: ~3e-15 relative over 1,000 steps).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        lrs = _unscaled_lrs(self.optimizer)
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        t, total = self.last_epoch, self.total_iters
        decay = ((1.0 - t / total) / (1.0 - (t - 1) / total)) ** self.power
        return [lr * decay for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [
            base * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters) ** self.power
            for base in self.base_lrs
        ]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``initial_lr`` to ``eta_min`` over ``T_max`` steps (SGDR without restarts).

    Recursive, as torch:

    .. math::
        \eta_{t} = \eta_{\min} + (\eta_{t-1} - \eta_{\min})
        \frac{1 + \cos(\pi t / T_{max})}{1 + \cos(\pi (t-1) / T_{max})}

    except one step past each minimum (``(t - 1 - T_max) % (2 T_max) == 0``), where the ratio
    would be 0/0 and the lr is increased additively instead, and at the first step after
    resuming with ``last_epoch > 0``, which uses the closed form. The schedule keeps going
    past ``T_max``: the lr climbs back up (period ``2 T_max``).

    **Why not the closed form** ``eta_min + (base_lr - eta_min)(1 + cos(pi t / T_max)) / 2``:
    the recursion lets ``CosineAnnealingLR`` be chained with other schedulers (it scales
    whatever lr is in the group), but its rounding accumulates: over 1,000 steps it is up to
    ~1.4e-15 relative off the closed form with ``T_max=1000``, and ~2e-13 with ``T_max=100``,
    where each restart of the climb carries the error of the previous period. optimkit
    reproduces torch's recursion bit for bit; :func:`optimkit.schedules.cosine` is the closed
    form.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        eta_min, t_max, t = self.eta_min, self.T_max, self.last_epoch
        if self._is_initial:
            return _unscaled_lrs(self.optimizer)
        if self._step_count == 1 and t > 0:  # first step after resuming: closed form
            return [
                eta_min + (base - eta_min) * (1 + math.cos(t * math.pi / t_max)) / 2 for base in self.base_lrs
            ]
        lrs = _unscaled_lrs(self.optimizer)
        if (t - 1 - t_max) % (2 * t_max) == 0:  # just past a minimum: additive restart of the climb
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
                for lr, base in zip(lrs, self.base_lrs)
            ]
        ratio = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
        return [ratio * (lr - eta_min) + eta_min for lr in lrs]

    def _get_closed_form_lr(self) -> list[Number]:
        return [
            self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
            for base in self.base_lrs
        ]


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------
def _check_children(owner: str, optimizer: Any, schedulers: Sequence[Any]) -> None:
    for i, scheduler in enumerate(schedulers):
        if not hasattr(scheduler, "optimizer"):
            raise TypeError(f"{owner} at index {i} should have `optimizer` as its attribute.")
        if isinstance(scheduler, ReduceLROnPlateau) or type(scheduler).__name__ == "ReduceLROnPlateau":
            raise ValueError(
                f"{owner} does not support `ReduceLROnPlateau` scheduler as it requires additional kwargs "
                f"to be specified when calling `step`, but got one at index {i} in the given schedulers sequence."
            )
        if optimizer != scheduler.optimizer:
            raise ValueError(
                f"{owner} expects all schedulers to belong to the same optimizer, but got scheduler "
                f"{type(scheduler).__name__} at index {i} has {scheduler.optimizer}, which is different "
                f"from {type(optimizer).__name__}."
            )


class _ChildrenStateMixin:
    """State dicts of composite schedulers: the children's state dicts under ``_schedulers``."""

    _schedulers: list[Any]

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in (*self._not_state, "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        children = state_dict.pop("_schedulers")
        try:
            self.__dict__.update(state_dict)
        finally:
            state_dict["_schedulers"] = children
        for scheduler, child_state in zip(self._schedulers, children):
            scheduler.load_state_dict(child_state)


class SequentialLR(_ChildrenStateMixin, LRScheduler):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on; each starts (``epoch=0``) at its milestone.

    The children may be optimkit's or torch's schedulers.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedulers: list[Any],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError(f"{type(self).__name__} expects at least one scheduler, but got no scheduler.")
        _check_children(type(self).__name__, optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than the number "
                f"of milestone points, but got number of schedulers {len(schedulers)} and the number of "
                f"milestones to be equal to {len(milestones)}"
            )
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:  # back to the initial lrs...
            _set_lr(group, group["initial_lr"])
        self.recursive_undo()  # ...and undo the construction step of every child
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Undo the construction step of every (nested) child: ``last_epoch -= 1``."""
        target = self if sched is None else sched
        if hasattr(target, "_schedulers"):
            for child in target._schedulers:
                self.recursive_undo(child)
        elif hasattr(target, "last_epoch"):
            target.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)  # closed form at the child's epoch 0
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_ChildrenStateMixin, LRScheduler):
    """Step several (chainable) schedulers at once; their lr changes compose multiplicatively."""

    def __init__(self, schedulers: Sequence[Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        if len(schedulers) < 1:
            raise ValueError(
                f"{type(self).__name__} expects at least one scheduler to be chained, but got no scheduler."
            )
        optimizer = optimizer or schedulers[0].optimizer
        _check_children(type(self).__name__, optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")

    def step(self) -> None:  # type: ignore[override]
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _group_values(self._schedulers[-1].optimizer, "lr")


# ---------------------------------------------------------------------------------------------
# ReduceLROnPlateau
# ---------------------------------------------------------------------------------------------
class ReduceLROnPlateau(LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
    """Multiply the lr by ``factor`` once a metric stops improving for ``patience`` epochs.

    ``step(metrics)`` takes the metric. ``min_lr`` bounds the unscaled lr (a group's
    ``lr_scale`` multiplies it, as it multiplies the lr).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(optimizer.param_groups):
                raise ValueError(f"expected {len(optimizer.param_groups)} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        for group in optimizer.param_groups:
            if "lr_scale" in group:  # torch never writes the lr here; a scaled group needs it
                _take_over(group)
        self._last_lr = _group_values(self.optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(_EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _group_values(self.optimizer, "lr")

    def _reduce_lr(self, epoch: int) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({len(groups)}) differs from when "
                    f"`ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due to a new param "
                    "group being added to the optimizer. Please modify the `min_lrs` field to match the "
                    "length of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old_lr = float(_unscaled_lr(group))
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                _set_lr(group, new_lr)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)


# ---------------------------------------------------------------------------------------------
# Momentum-cycling schedulers
# ---------------------------------------------------------------------------------------------
def _set_momentum(group: dict[str, Any], use_beta1: bool, momentum: float) -> None:
    if use_beta1:
        group["betas"] = (momentum, *group["betas"][1:])
    else:
        group["momentum"] = momentum


def _init_momentum_cycling(
    optimizer: torch.optim.Optimizer, max_momentum: Any, base_momentum: Any, last_epoch: int
) -> tuple[bool, list[Any], list[Any]]:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")
    use_beta1 = "betas" in optimizer.defaults
    max_momentums = _per_group("max_momentum", optimizer, max_momentum)
    base_momentums = _per_group("base_momentum", optimizer, base_momentum)
    if last_epoch == -1:
        for m_max, m_base, group in zip(max_momentums, base_momentums, optimizer.param_groups):
            _set_momentum(group, use_beta1, m_max)
            group["max_momentum"] = m_max
            group["base_momentum"] = m_base
    return use_beta1, max_momentums, base_momentums


class CyclicLR(LRScheduler):
    """Cyclical learning rates (Smith 2017): triangular, triangular2 and exp_range policies.

    The lr cycles between ``base_lr`` and ``max_lr`` (closed form in the step index); with
    ``cycle_momentum`` the momentum (or ``beta1``) cycles inversely between ``max_momentum``
    and ``base_momentum``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                _set_lr(group, lr)
        self.max_lrs = _per_group("max_lr", optimizer, max_lr)
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if mode not in ["triangular", "triangular2", "exp_range"] and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_ref: Callable[[float], float]
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1, self.max_momentums, self.base_momentums = _init_momentum_cycling(
                optimizer, max_momentum, base_momentum, last_epoch
            )
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref = self._triangular_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref = self._triangular2_scale_fn
            self.scale_mode = "cycle"
        elif self.mode == "exp_range":
            self._scale_fn_ref = partial(self._exp_range_scale_fn, self.gamma)
            self.scale_mode = "iterations"

    def scale_fn(self, x: float) -> float:
        """The amplitude scaling policy at cycle (or iteration) ``x``."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    @staticmethod
    def _triangular_scale_fn(x: float) -> float:
        return 1.0

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        return 1 / (2.0 ** (x - 1))

    @staticmethod
    def _exp_range_scale_fn(gamma: float, x: float) -> float:
        return gamma**x

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        x_scale = cycle if self.scale_mode == "cycle" else self.last_epoch
        # scale_fn is called once per value, as torch calls it (a custom one may count calls)
        lrs = [
            base + (peak - base) * scale_factor * self.scale_fn(x_scale)
            for base, peak in zip(self.base_lrs, self.max_lrs)
        ]
        if self.cycle_momentum:
            momentums = [
                m_max - (m_max - m_base) * scale_factor * self.scale_fn(x_scale)
                for m_base, m_max in zip(self.base_momentums, self.max_momentums)
            ]
            for group, momentum in zip(self.optimizer.param_groups, momentums):
                _set_momentum(group, self.use_beta1, momentum)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """State without the scaling function (a custom callable object's ``__dict__`` is saved)."""
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        fn = state.pop("_scale_fn_custom")
        state["_scale_fn_custom"] = None
        if fn is not None and not isinstance(fn, types.FunctionType):
            state["_scale_fn_custom"] = fn.__dict__.copy()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        fn_state = state_dict.pop("_scale_fn_custom")
        try:
            super().load_state_dict(state_dict)  # keeps our own custom function, if any
        finally:
            state_dict["_scale_fn_custom"] = fn_state
        if fn_state is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(fn_state)
        self._init_scale_fn()


class CosineAnnealingWarmRestarts(LRScheduler):
    r"""SGDR: cosine annealing restarted every ``T_i`` epochs, ``T_i`` growing by ``T_mult``.

    Closed form in ``T_cur`` (the epochs since the last restart), as in torch:
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``. ``step`` may take a
    fractional ``epoch`` (``epoch + i / iters``) to restart mid-epoch.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}")
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        return [
            self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
            for base in self.base_lrs
        ]

    def step(self, epoch: float | None = None) -> None:
        """One step, or jump to (possibly fractional) ``epoch``.

        As in torch, this step does not count ``_step_count`` nor warn about the step order.
        """
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult ** (n)
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        with self._within_step():
            values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            _set_lr(group, lr)
        self._last_lr = _group_values(self.optimizer, "lr")


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2017): warm up to ``max_lr``, then anneal far below.

    Two phases by default (fastai's variant); ``three_phase=True`` is the paper's schedule
    (up, symmetric down to ``initial_lr``, then annihilation to ``min_lr``). Closed form in
    the step index; ``cycle_momentum`` anneals momentum (or ``beta1``) inversely. The group
    entries ``initial_lr``, ``max_lr`` and ``min_lr`` it writes are unscaled.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        def phase(end_step: float, start_lr: str, end_lr: str, start_m: str, end_m: str) -> dict[str, Any]:
            return {
                "end_step": end_step,
                "start_lr": start_lr,
                "end_lr": end_lr,
                "start_momentum": start_m,
                "end_momentum": end_m,
            }

        warmup_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            self._schedule_phases = [
                phase(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                phase(
                    float(2 * pct_start * self.total_steps) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                phase(self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._schedule_phases = [
                phase(warmup_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                phase(self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._anneal_func_type = anneal_strategy

        max_lrs = _per_group("max_lr", self.optimizer, max_lr)
        if last_epoch == -1:
            for peak, group in zip(max_lrs, self.optimizer.param_groups):
                group["initial_lr"] = peak / div_factor
                group["max_lr"] = peak
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1, _, _ = _init_momentum_cycling(optimizer, max_momentum, base_momentum, last_epoch)
        super().__init__(optimizer, last_epoch)

    def _anneal_func(self, start: float, end: float, pct: float) -> float:
        kind = self.__dict__.get("_anneal_func_type")
        if kind is None:  # state dicts of old torch versions stored the function itself
            return self.anneal_func(start, end, pct)  # type: ignore[attr-defined]
        if kind == "cos":
            return self._annealing_cos(start, end, pct)
        if kind == "linear":
            return self._annealing_linear(start, end, pct)
        raise ValueError(f"Unknown _anneal_func_type: {kind}")

    @staticmethod
    def _annealing_cos(start: float, end: float, pct: float) -> float:
        """Cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    @staticmethod
    def _annealing_linear(start: float, end: float, pct: float) -> float:
        """Straight line from ``start`` (pct 0) to ``end`` (pct 1)."""
        return (end - start) * pct + start

    def get_lr(self) -> list[Number]:
        self._warn_if_outside_step()
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"Tried to step {step} times. The specified number of total steps is {self.total_steps}"
            )
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, ph in enumerate(self._schedule_phases):
                end_step = ph["end_step"]
                if step <= end_step or i == last:
                    pct = (step - start_step) / (end_step - start_step)
                    lrs.append(self._anneal_func(group[ph["start_lr"]], group[ph["end_lr"]], pct))
                    if self.cycle_momentum:
                        momentum = self._anneal_func(
                            group[ph["start_momentum"]], group[ph["end_momentum"]], pct
                        )
                        _set_momentum(group, self.use_beta1, momentum)
                    break
                start_step = ph["end_step"]
        return lrs

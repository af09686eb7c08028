r"""Weight averaging: torch's ``torch.optim.swa_utils`` API (SWA and EMA), with torch's numbers.

* :class:`AveragedModel` keeps a running average of a model's parameters (and optionally
  buffers): the equal-weight average of SWA (Izmailov et al. 2018) by default, or any
  ``avg_fn`` / ``multi_avg_fn`` -- :func:`get_ema_multi_avg_fn` gives an exponential moving
  average (EMA / Polyak averaging).
* :class:`SWALR` anneals each group's lr to a constant ``swa_lr`` for the SWA phase.
* :func:`update_bn` recomputes BatchNorm statistics for the averaged weights.

The averages are computed with the same tensor operations as torch (``_foreach_lerp_``,
the same ``1 / (n + 1)`` weights, the same device/dtype grouping), so the averaged weights
are bit-identical to torch's. :func:`ema` is a shortcut for an EMA model.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor
from torch.nn import Module

from .lr_scheduler import LRScheduler, _per_group, _unscaled_lr

__all__ = [
    "AveragedModel",
    "update_bn",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
    "ema",
]

ParamList = list[Tensor] | tuple[Tensor, ...]


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(f"Invalid decay value {decay} provided. Please provide a value in [0,1] range.")


def _foreach_devices() -> list[str]:
    """Device types with multi-tensor (foreach) kernels -- where torch averages in one call."""
    return ["cuda", "xpu", "mtia", torch._C._get_privateuse1_backend_name()]


def get_ema_multi_avg_fn(decay: float = 0.999) -> Callable[[ParamList, ParamList, Any], None]:
    r"""In-place EMA over lists of tensors: ``W_ema <- decay * W_ema + (1 - decay) * W``.

    Floating-point tensors use ``lerp`` with weight ``1 - decay`` (as torch does); integer
    tensors ``W_ema * decay + W * (1 - decay)``.
    """
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_params: ParamList, current_params: ParamList, _: Any) -> None:
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, current_params, 1 - decay)
        else:
            for p_ema, p in zip(ema_params, current_params):
                p_ema.copy_(p_ema * decay + p * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn() -> Callable[[ParamList, ParamList, Tensor | int], None]:
    """In-place equal-weight running average over lists: ``W_avg += (W - W_avg) / (n + 1)``.

    Floating-point tensors use ``lerp`` with weight ``1 / (n + 1)``, as torch does. For
    integer tensors (BatchNorm's ``num_batches_tracked`` with ``use_buffers=True``) and a
    tensor ``n`` -- which is what :class:`AveragedModel` passes -- torch 2.13 raises
    (``addcdiv`` refuses integer division); optimkit computes what torch's single-tensor
    path computes instead: ``W_avg + (W - W_avg) / (n + 1)`` in floating point, truncated
    back into the integer tensor.
    """

    @torch.no_grad()
    def swa_update(averaged: ParamList, current: ParamList, num_averaged: Tensor | int) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1 / (num_averaged + 1))
        elif isinstance(num_averaged, Tensor):
            for p_avg, p in zip(averaged, current):
                p_avg.copy_(p_avg + (p - p_avg) / (num_averaged + 1))
        else:
            diffs = torch._foreach_sub(current, averaged)
            torch._foreach_add_(averaged, diffs, alpha=1.0 / (num_averaged + 1))

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> Callable[[Tensor, Tensor, Any], Tensor]:
    """EMA of one tensor: returns ``decay * W_ema + (1 - decay) * W``."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged: Any) -> Tensor:
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn() -> Callable[[Tensor, Tensor, Tensor | int], Tensor]:
    """Equal-weight running average of one tensor: returns ``W_avg + (W - W_avg) / (n + 1)``."""

    @torch.no_grad()
    def swa_update(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


def _group_by_device_and_dtype(averaged: list[Tensor], current: list[Tensor]) -> dict:
    """``{(device, dtype): (averaged, current)}`` in first-seen order (as torch groups them)."""
    groups: dict = {}
    for a, c in zip(averaged, current):
        lists = groups.setdefault((a.device, a.dtype), ([], []))
        lists[0].append(a)
        lists[1].append(c)
    return groups


class AveragedModel(Module):
    r"""A copy of ``model`` whose parameters are a running average of ``model``'s (SWA / EMA).

    Args:
        model: the module to average (deep-copied).
        device: where to keep the averaged copy (default: where ``model`` is).
        avg_fn: ``avg_fn(averaged, current, num_averaged) -> new averaged`` for one tensor.
        multi_avg_fn: in-place ``multi_avg_fn(averaged_list, current_list, num_averaged)``.
            With neither, the equal-weight average (SWA).
        use_buffers: average the buffers too (e.g. BatchNorm statistics); otherwise the
            buffers are copied from ``model`` at every update.

    The first :meth:`update_parameters` copies ``model``'s values; later ones average.
    ``n_averaged`` (a buffer, saved in the state dict) counts the updates.
    """

    n_averaged: Tensor

    def __init__(
        self,
        model: Module,
        device: int | torch.device | None = None,
        avg_fn: Callable[[Tensor, Tensor, Tensor | int], Tensor] | None = None,
        multi_avg_fn: Callable[[ParamList, ParamList, Tensor | int], None] | None = None,
        use_buffers: bool = False,
    ) -> None:
        super().__init__()
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def _tensors(self, model: Module) -> Iterable[Tensor]:
        if self.use_buffers:
            return itertools.chain(model.parameters(), model.buffers())
        return model.parameters()

    def update_parameters(self, model: Module) -> None:
        """Fold ``model``'s current weights into the average."""
        # Without use_buffers torch iterates self.parameters(), which are the module's.
        ours_iter = self._tensors(self.module) if self.use_buffers else self.parameters()
        averaged: list[Tensor] = []
        current: list[Tensor] = []
        first = bool(self.n_averaged == 0)
        for p_avg, p_model in zip(ours_iter, self._tensors(model)):
            p_now = p_model.detach().to(p_avg.device)
            averaged.append(p_avg.detach())
            current.append(p_now)
            if first:
                p_avg.detach().copy_(p_now)
        if self.n_averaged > 0:
            if self.multi_avg_fn is not None or self.avg_fn is None:
                for (device, _), (avg_list, cur_list) in _group_by_device_and_dtype(
                    averaged, current
                ).items():
                    n = self.n_averaged.to(device)
                    if self.multi_avg_fn is not None:
                        self.multi_avg_fn(avg_list, cur_list, n)
                    elif device is not None and device.type in _foreach_devices():
                        get_swa_multi_avg_fn()(avg_list, cur_list, n)
                    else:
                        swa = get_swa_avg_fn()
                        for p_avg, p_now in zip(avg_list, cur_list):
                            p_avg.copy_(swa(p_avg, p_now, n))
            else:
                for p_avg, p_now in zip(averaged, current):
                    n = self.n_averaged.to(p_avg.device)
                    p_avg.detach().copy_(self.avg_fn(p_avg.detach(), p_now, n))
        if not self.use_buffers:  # buffers follow the model instead of being averaged
            for b_avg, b_model in zip(self.module.buffers(), model.buffers()):
                b_avg.detach().copy_(b_model.detach().to(b_avg.device))
        self.n_averaged += 1


def ema(model: Module, decay: float = 0.999, use_buffers: bool = True, device: Any = None) -> AveragedModel:
    """An :class:`AveragedModel` keeping an exponential moving average of ``model``.

    ``AveragedModel(model, device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=...)``;
    call ``.update_parameters(model)`` after each optimizer step. Buffers (BatchNorm
    statistics) are averaged too by default, so no :func:`update_bn` pass is needed.
    """
    return AveragedModel(
        model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers
    )


@torch.no_grad()
def update_bn(loader: Iterable[Any], model: Module, device: int | torch.device | None = None) -> None:
    """Recompute the BatchNorm running statistics of ``model`` with one pass over ``loader``.

    Each batch is a tensor or a list/tuple whose first element is the input. The statistics
    are reset and accumulated as a cumulative average (``momentum=None``); the modules'
    momenta and the model's train/eval mode are restored afterwards.
    """
    momenta = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if device is not None:
            batch = batch.to(device)
        model(batch)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


class SWALR(LRScheduler):
    """Anneal every group's lr to ``swa_lr`` over ``anneal_epochs`` steps, then hold it.

    ``anneal_strategy`` is ``"cos"`` or ``"linear"``. As in torch the annealing is recursive
    (each step recovers the previous start point from the current lr), so it composes with
    an lr changed by another scheduler. ``swa_lr`` is unscaled: a group's ``lr_scale``
    multiplies it, as it multiplies the lr.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        swa_lr: float | list[float],
        anneal_epochs: int = 10,
        anneal_strategy: str = "cos",
        last_epoch: int = -1,
    ) -> None:
        for lr, group in zip(_per_group("swa_lr", optimizer, swa_lr), optimizer.param_groups):
            group["swa_lr"] = lr
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t: float) -> float:
        return t

    @staticmethod
    def _cosine_anneal(t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr: Any, swa_lr: float, alpha: float) -> Any:
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self) -> list[Any]:
        if not self._get_lr_called_within_step:
            warnings.warn(
                "To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                UserWarning,
                stacklevel=2,
            )
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_t = max(0, min(1, (step - 1) / max(1, self.anneal_epochs)))
        prev_alpha = self.anneal_func(prev_t)
        groups = self.optimizer.param_groups
        prev_lrs = [self._get_initial_lr(_unscaled_lr(g), g["swa_lr"], prev_alpha) for g in groups]
        t = max(0, min(1, step / max(1, self.anneal_epochs)))
        alpha = self.anneal_func(t)
        return [g["swa_lr"] * alpha + lr * (1 - alpha) for g, lr in zip(groups, prev_lrs)]

    def _set_anneal_func(self, anneal_strategy: str) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def state_dict(self) -> dict[str, Any]:
        """Torch's keys: everything but the optimizer and the annealing function."""
        return {k: v for k, v in self.__dict__.items() if k not in (*self._not_state, "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)

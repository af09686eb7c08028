"""``fused=True``: torch's fused multi-tensor kernels as an execution strategy.

For the optimizers torch has fused kernels for (SGD, Adam, AdamW, Adagrad), ``fused=True``
feeds the group's tensors to those ATen kernels (``torch._fused_adam_`` and friends), so the
numbers equal ``torch.optim``'s ``fused=True`` -- which differ from the for-loop's in the last
bits. The update rules themselves live in the optimizer modules; this module only decides how
tensors reach a kernel: a rule declares its kernel by name (``@rule(fused="adam")``) and
:data:`KERNELS` maps the name to the call. ``GradScaler`` unscaling inside the kernel (``grad_scale`` /
``found_inf``) is supported, as in torch.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer
from torch import Tensor

from ..ops import to_scalar
from . import sharded
from .job import Job

__all__ = ["Fused", "KERNELS", "group_by_device_and_dtype"]

_DTYPE, _DEVICE = operator.attrgetter("dtype"), operator.attrgetter("device")


def _check_fusable(p: Tensor) -> None:
    devices = _torch_optimizer._get_fused_kernels_supported_devices()
    if not (p.device.type in devices and torch.is_floating_point(p)):
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of "
            f"supported devices: {devices} but {p.dtype} and {p.device.type}"
        )


class Fused:
    """Feeds a group to torch's fused kernel named by the rule (``rule.caps.fused``)."""

    def step(self, job: Job) -> None:
        params, grads, group, store = job.params, job.grads, job.group, job.store
        kernel = job.rule.caps.fused
        kinds = set(zip(map(_DTYPE, params), map(_DEVICE, params)))
        for dtype, device in kinds:  # one check per (dtype, device), not per parameter
            _check_fusable(torch.empty(0, dtype=dtype, device=device))
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"`_fused_{kernel}` does not support sparse gradients")
        states = job.states()
        group_params, dstates = params, states
        is_sharded = sharded.any_dtensor(params)
        if is_sharded:  # torch's fused kernels have no DTensor rule for all kinds: feed local shards
            params, grads, states = map(list, zip(*map(sharded.to_local, params, grads, dstates)))
        if len(kinds) == 1:  # the common case: no regrouping
            grouped = [(params, grads, states)]
        else:
            grouped = [lists for lists, _ in group_by_device_and_dtype([params, grads, states]).values()]
        for d_params, d_grads, d_states in grouped:
            device = d_params[0].device
            scale = job.grad_scale.to(device) if job.grad_scale is not None else None
            inf = job.found_inf.to(device) if job.found_inf is not None else None
            KERNELS[kernel](group, d_params, d_grads, d_states, scale, inf)
        if is_sharded:
            for p, st, local_st in zip(group_params, dstates, states):
                sharded.from_local(p, st, local_st)
        store.commit(group_params, dstates)


def _lr(group: dict[str, Any], device: torch.device) -> Any:
    lr = group["lr"]
    if isinstance(lr, Tensor) and lr.device.type != "cpu":
        lr = lr.to(device)
    return lr


def _fused_sgd(group, params, grads, states, grad_scale, found_inf) -> None:
    momentum = group["momentum"]
    bufs: list[Tensor] = []
    first = False
    if momentum != 0:
        first = all("momentum_buffer" not in s for s in states)
        for s, g in zip(states, grads):
            if "momentum_buffer" not in s:
                if not first:  # a parameter joining late: its buffer starts as its gradient
                    s["momentum_buffer"] = g.detach().clone()
                    continue
                s["momentum_buffer"] = torch.empty_like(g)
        bufs = [s["momentum_buffer"] for s in states]
    torch._fused_sgd_(
        params, grads, bufs,
        weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
        dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
        is_first_step=first, grad_scale=grad_scale, found_inf=found_inf,
    )  # fmt: skip


def _fused_adam(group, params, grads, states, grad_scale, found_inf) -> None:
    steps = [s["step"] for s in states]
    beta1, beta2 = group["betas"]
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    torch._foreach_add_(steps, 1)
    kernel(
        params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [], steps,
        amsgrad=group["amsgrad"], lr=_lr(group, params[0].device),
        beta1=to_scalar(beta1), beta2=to_scalar(beta2), weight_decay=group["weight_decay"],
        eps=group["eps"], maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf,
    )  # fmt: skip
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


def _fused_adagrad(group, params, grads, states, grad_scale, found_inf) -> None:
    if any(p.is_complex() for p in params):
        raise RuntimeError("`fused` does not support sparse grad or complex param")
    steps = [s["step"] for s in states]
    torch._foreach_add_(steps, 1)
    torch._fused_adagrad_(
        params, grads, [s["sum"] for s in states], steps,
        lr=_lr(group, params[0].device), lr_decay=group["lr_decay"],
        weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
        grad_scale=grad_scale, found_inf=found_inf,
    )  # fmt: skip
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))


KERNELS = {"sgd": _fused_sgd, "adam": _fused_adam, "adagrad": _fused_adagrad}


def group_by_device_and_dtype(tensorlistlist: list[list[Any]]) -> dict[tuple, tuple[list[list[Any]], list[int]]]:
    """Parallel lists grouped by the (device, dtype) of the first list's tensors:
    ``{(device, dtype): (lists, indices)}``, in first-seen order."""
    grouped: dict[tuple, tuple[list[list[Any]], list[int]]] = {}
    for i, first in enumerate(tensorlistlist[0]):
        lists, indices = grouped.setdefault((first.device, first.dtype), ([[] for _ in tensorlistlist], []))
        for out, items in zip(lists, tensorlistlist):
            out.append(items[i])
        indices.append(i)
    return grouped

"""Shared pieces of the optimizers whose oracle is pytorch-optimizer (LAMB, LARS, MARS).

pytorch-optimizer runs each optimizer along one of two code paths: a batched one
(``torch._foreach_*``, its default for groups of real parameters with dense gradients) and
a per-tensor one (``foreach=False``, complex parameters, some options). They compute the same
formula in different op orders, so the rules here take a ``batched`` flag and follow the
path the oracle would take, bit for bit: on the batched path with the same
``torch._foreach_*`` ops (on one-tensor lists), which do not always round as the ops they
batch (``torch._foreach_mul_`` of bfloat16 by a float differs from ``mul_`` in the last bit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..rule import Rule

__all__ = [
    "norm",
    "add_scaled_update",
    "all_real_dense",
    "check_lr",
    "check_range",
    "check_betas",
    "hyper_with",
]


def step_counted(opt: Any, closure: Any) -> Any:
    """``opt.step(closure)`` with pytorch-optimizer's step count: ``group["step"]``, an int in
    each group, counts the optimizer's steps (also those where no parameter of the group had
    a gradient). A step that raises before changing anything (the checks of
    ``_check_group``) leaves the count as it was."""
    opt._accelerator_graph_capture_health_check()
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    for group in opt.param_groups:
        previous = group.get("step")
        group["step"] = (previous or 0) + 1
        try:
            opt._step_group(group)
        except BaseException:
            if previous is None:
                del group["step"]
            else:
                group["step"] = previous
            raise
    return loss


def norm(t: Tensor, batched: bool) -> Tensor:
    """The 2-norm of the whole tensor as the oracle takes it: ``torch._foreach_norm`` on its
    batched path, ``torch.linalg.norm`` on its per-tensor one (the same numbers on CPU; CUDA's
    foreach kernel reduces in another order)."""
    return torch._foreach_norm([t])[0] if batched else torch.linalg.norm(t)


def add_scaled_update(param: Tensor, update: Tensor, alpha: Any) -> None:
    """``param += alpha * update`` as pytorch-optimizer's ``foreach_add_`` does it (its
    batched path): ``torch._foreach_add_`` with a float alpha, or with a tensor alpha the
    update multiplied in the promoted dtype first."""
    if isinstance(alpha, Tensor):
        dtype = torch.promote_types(param.dtype, alpha.dtype)
        torch._foreach_add_([param], torch._foreach_mul([update.to(dtype=dtype)], alpha))
    else:
        torch._foreach_add_([param], [update], alpha=alpha)


def all_real_dense(group: dict[str, Any]) -> bool:
    """pytorch-optimizer's ``can_use_foreach``: some parameter of the group has a gradient,
    and none with a gradient is complex or has a sparse one."""
    pairs = [(p, p.grad) for p in group["params"] if p.grad is not None]
    return bool(pairs) and not any(g.is_sparse or torch.is_complex(p) for p, g in pairs)


def check_lr(lr: Any, name: str = "lr") -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")
    if lr < 0.0:
        raise ValueError(f"{name} must be non-negative, got {lr}")


def check_range(x: float, name: str, high: float | None = None) -> None:
    """``x >= 0`` (and ``x < high``), with pytorch-optimizer's wording."""
    if high is None:
        if x < 0.0:
            raise ValueError(f"{name} must be non-negative, got {x}")
    elif not 0.0 <= x < high:
        raise ValueError(f"{name} must be in the range [0.0, {high}), got {x}")


def check_betas(betas: tuple[float, ...], name: str = "betas") -> None:
    for i, beta in enumerate(betas[:2]):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}[{i}] (beta{i + 1}) must be in the range [0.0, 1.0), got {beta}")


def hyper_with(rule_: Rule, group: dict[str, Any], computed: dict[str, Any]) -> dict[str, Any]:
    """The rule's keyword arguments: the group's keys plus ``computed`` (per step, not kept
    in the group)."""
    return rule_.hyperparameters({**group, **computed})

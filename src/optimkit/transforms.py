r"""Pieces of update rules that several rules share, each written once.

They are the rules' own ops in the rules' own order -- factoring them out changes no bit.
A rule calls them in the order of its formula::

    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    ...
    exp_avg_sq = running_max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
    ...
    update = caution(update, grad) if cautious else update
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import add_scaled, differentiating, taken
from .rule import Rule

__all__ = ["decay_weights", "running_max", "caution", "cautious_rule"]


def decay_weights(param: Tensor, grad: Tensor, *, lr: Any, weight_decay: Any, decoupled: bool = False) -> Tensor:
    r"""Weight decay :math:`\lambda`: decoupled (AdamW, Loshchilov & Hutter 2019)
    :math:`\theta \leftarrow \theta(1 - \gamma\lambda)`, in place; or coupled (L2)
    :math:`g \leftarrow g + \lambda\theta`. Returns the gradient to use from here on."""
    if taken(weight_decay != 0):
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = add_scaled(grad, param, weight_decay)
    return grad


def running_max(max_t: Tensor, t: Tensor) -> Tensor:
    r""":math:`\hat v \leftarrow \max(\hat v, v)` in place (AMSGrad, Reddi et al. 2018); returns
    :math:`\hat v`. A differentiable step writes the maximum of a copy (autograd saved the old)."""
    if differentiating():
        max_t.copy_(torch.maximum(max_t.clone(), t))
    else:
        torch.maximum(max_t, t, out=max_t)
    return max_t


def caution(update: Tensor, grad: Tensor) -> Tensor:
    r"""The cautious mask (Liang et al. 2024, *Cautious Optimizers: Improving Training with
    One Line of Code*): keep the components of the update that agree in sign with the
    gradient, rescaled so the mask averages 1 -- timm's ``caution=True`` (1.0.31), op for op:

    .. math::
        \phi = \mathbb{1}[u \odot g > 0], \qquad
        u \leftarrow u \odot \frac{\phi}{\max(\operatorname{mean}(\phi), 10^{-3})}

    (the authors' code scales by :math:`\mathrm{numel}/(\sum\phi + 1)` instead). Returns
    the masked update as a new tensor; ``update`` is not changed.

    The mean is over the whole tensor: a rule that calls this is not elementwise. Its
    optimizer steps a cautious group with :func:`cautious_rule` -- per tensor, never on a
    pack of several tensors or a chunk of one, and gathered under FSDP2, so the mean is
    always the whole parameter's.
    """
    mask = (update * grad > 0).to(grad.dtype)
    mask.div_(mask.mean().clamp_(min=1e-3))
    return update * mask


def cautious_rule(rule: Rule, group: dict[str, Any]) -> Rule:
    """``rule``, or for a group with ``cautious=True`` the same rule declared whole-tensor
    (no packs, chunks, local shards, compiled loop or fused kernel: see :func:`caution`)."""
    if group.get("cautious"):
        if group.get("fused"):
            raise ValueError("cautious=True has no fused kernel: use fused=False (or None)")
        return rule.variant(elementwise=False, fused=None)
    return rule

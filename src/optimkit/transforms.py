r"""Pieces of update rules that several rules share, each written once.

They are the rules' own ops in the rules' own order -- factoring them out changes no bit.
A rule calls them in the order of its formula::

    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    ...
    exp_avg_sq = running_max(max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .ops import add_scaled, differentiating, taken

__all__ = ["decay_weights", "running_max"]


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

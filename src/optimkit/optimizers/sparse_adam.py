"""SparseAdam: Adam masked to the entries a sparse gradient touches (Kingma & Ba 2015)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ..rule import rule, scalar, zeros
from ._checks import check_betas

__all__ = ["SparseAdam", "sparse_adam_"]

_DENSE_GRAD_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


# torch keeps SparseAdam's step a Python int.
@rule(state={"step": scalar(lambda p, group: 0), "exp_avg": zeros, "exp_avg_sq": zeros}, sparse="only", complex=False)
def sparse_adam_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float, float],
    eps: float,
    maximize: bool,
) -> None:
    r"""One SparseAdam step on the dense ``param`` (in place) from the sparse ``grad``.

    Only the entries :math:`i` present in ``grad`` change:

    .. math::
        t &\leftarrow t + 1 \\
        m_i &\leftarrow m_i + (1-\beta_1)(g_i - m_i), \quad
            v_i \leftarrow v_i + (1-\beta_2)(g_i^2 - v_i) \\
        \theta_i &\leftarrow \theta_i - \gamma\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_i}{\sqrt{v_i} + \epsilon}

    State: ``step`` (a Python int, as in torch), ``exp_avg`` (m), ``exp_avg_sq`` (v). The step
    counts even when the gradient has no entries (then nothing else changes).
    """
    if not grad.is_sparse:
        raise RuntimeError(_DENSE_GRAD_ERROR)
    beta1, beta2 = betas
    state["step"] += 1
    step = state["step"]
    if maximize:
        grad = -grad
    grad = grad.coalesce()  # the update is non-linear, so every index must appear once
    indices, values = grad._indices(), grad._values()
    if values.numel() == 0:
        return
    size = grad.size()
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

    def sparse(v: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(indices, v, size)

    # old <- b * old + (1 - b) * new, written as old += (1 - b) * (new - old) on the touched rows.
    old_exp_avg = exp_avg.sparse_mask(grad)._values()
    exp_avg_update = values.sub(old_exp_avg).mul_(1 - beta1)
    exp_avg.add_(sparse(exp_avg_update))
    old_exp_avg_sq = exp_avg_sq.sparse_mask(grad)._values()
    exp_avg_sq_update = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2)
    exp_avg_sq.add_(sparse(exp_avg_sq_update))

    # The new moments of the touched rows, rebuilt densely (torch avoids a second sparse_mask).
    numer = exp_avg_update.add_(old_exp_avg)
    denom = exp_avg_sq_update.add_(old_exp_avg_sq).sqrt_().add_(eps)

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    param.add_(sparse(-step_size * numer.div_(denom)))


class SparseAdam(Optimizer):
    r"""SparseAdam, exactly as ``torch.optim.SparseAdam``: dense parameters, sparse gradients
    (e.g. ``nn.Embedding(sparse=True)``); moments and parameters change only where the
    gradient has entries. Adam: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.

    Args:
        params: dense, real parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` added to the denominator (default: 1e-8).
        maximize (bool): maximize the objective.

    State per parameter: ``step`` (Python int), ``exp_avg``, ``exp_avg_sq``.
    """

    rule = sparse_adam_
    lab_lr = 0.01
    configs = (
        {}, {"lr": 0.01}, {"lr": torch.tensor(0.01)}, {"maximize": True}, {"betas": (0.8, 0.9), "eps": 1e-6},
        {"lr": 0.05, "betas": (0.5, 0.7), "maximize": True},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        # Unlike the other optimizers, torch requires lr > 0 and eps > 0 strictly here.
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, maximize=maximize)
        super().__init__(params, defaults)

        # torch lists every offending [group index, param index] in one message.
        sparse, complex_ = [], []
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse.append([gi, pi])
                if p.is_complex():
                    complex_.append([gi, pi])
        if sparse:
            raise ValueError(
                f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors"
            )
        if complex_:
            raise ValueError(
                f"Complex params at indices {complex_}: SparseAdam does not support complex parameters"
            )

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        # Raised before anything changes (torch raises mid-loop, after counting the steps of
        # the group's earlier parameters).
        if any(not p.grad.is_sparse for p in params):
            raise RuntimeError(_DENSE_GRAD_ERROR)

"""SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import math
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer, Oracle
from ..rule import like, other, rule, scalar

__all__ = ["SOAP", "soap_", "merge_small_dims"]

_FORMATS = ("channels_first", "channels_last")


def merge_small_dims(shape: Any, max_dim: int) -> list[int]:
    """pytorch-optimizer's ``merge_small_dims``: neighbouring dimensions multiplied together
    while the product stays ``<= max_dim`` (``[1, 2, 512, 1, 2048, 1, 3, 4]``, 1024 ->
    ``[1024, 2048, 12]``). A shape that merges into *one* dimension gives ``[1]`` (so that
    reshaping to it fails unless the tensor has one element), as there."""
    merged: list[int] = []
    product = 1
    for dim in shape:
        product *= dim
        if product > max_dim:
            merged.append(product // dim)
            product = dim
    merged.append(product)
    return merged if len(merged) > 1 else [1]


def _merge(t: Tensor, max_dim: int, data_format: str) -> Tensor:
    if data_format == "channels_last" and t.dim() == 4:
        t = t.permute(0, 3, 1, 2)
    return t.reshape(merge_small_dims(t.size(), max_dim))


def _project(t: Tensor, Q: list[Any], merge_dims: bool, max_dim: int, data_format: str, forward: bool) -> Tensor:
    """``t`` in the eigenbasis (``forward``: contract each dimension with its ``Q``) or back
    (``Q^T``); a dimension without a ``Q`` (``[]``) is only rotated to the end."""
    original_shape = permuted_shape = t.shape
    do_permute = data_format == "channels_last" and len(original_shape) == 4
    if merge_dims:
        if do_permute:
            permuted_shape = t.permute(0, 3, 1, 2).shape
        t = _merge(t, max_dim, data_format)
    for mat in Q:
        if len(mat) > 0:
            t = torch.tensordot(t, mat, dims=[[0], [0 if forward else 1]])
        else:
            t = t.permute([*list(range(1, len(t.shape))), 0])
    if merge_dims:
        t = t.reshape(permuted_shape).permute(0, 2, 3, 1) if do_permute else t.reshape(original_shape)
    return t


def _eigenbases(GG: list[Any]) -> list[Any]:
    """The eigenvectors of each statistic, by decreasing eigenvalue (the first basis).

    ``eigh`` in the statistic's dtype; where it fails (bfloat16, float16 have no ``eigh``) in
    float64, cast back -- as pytorch-optimizer."""
    out: list[Any] = []
    for m in GG:
        if len(m) == 0:
            out.append([])
            continue
        try:
            _, q = torch.linalg.eigh(m + 1e-30 * torch.eye(m.shape[0], device=m.device, dtype=m.dtype))
        except Exception:  # noqa: BLE001 - pytorch-optimizer's fallback, for any failure
            _, q = torch.linalg.eigh(
                m.to(torch.float64) + 1e-30 * torch.eye(m.shape[0], device=m.device, dtype=torch.float64)
            )
            q = q.to(m.dtype)
        out.append(torch.flip(q, dims=[1]))
    return out


def _refreshed_bases(state: dict[str, Any], max_dim: int, merge_dims: bool, data_format: str) -> list[Any]:
    """One power iteration + QR per statistic (every ``precondition_frequency`` steps): the
    new bases, their columns by decreasing estimated eigenvalue, and ``exp_avg_sq`` permuted
    to match (stored back into ``state``). The QR runs in float32 for every dtype, as in
    pytorch-optimizer (float64 parameters too: their bases are float32-accurate)."""
    original_shape = permuted_shape = state["exp_avg_sq"].shape
    if data_format == "channels_last" and len(original_shape) == 4:
        permuted_shape = state["exp_avg_sq"].permute(0, 3, 1, 2).shape
    exp_avg_sq = state["exp_avg_sq"]
    if merge_dims:
        exp_avg_sq = _merge(exp_avg_sq, max_dim, data_format)
    out: list[Any] = []
    for ind, (m, o) in enumerate(zip(state["GG"], state["Q"])):
        if len(m) == 0:
            out.append([])
            continue
        matrix_product = m @ o
        est_eig = (o * matrix_product).sum(dim=0)
        sort_idx = torch.argsort(est_eig, descending=True)
        exp_avg_sq = exp_avg_sq.index_select(ind, sort_idx)
        power_iter = matrix_product.index_select(1, sort_idx)
        q, _ = torch.linalg.qr(power_iter.to(torch.float32))
        out.append(q.to(power_iter.dtype))
    if merge_dims:
        if data_format == "channels_last" and len(original_shape) == 4:
            exp_avg_sq = exp_avg_sq.reshape(permuted_shape).permute(0, 2, 3, 1)
        else:
            exp_avg_sq = exp_avg_sq.reshape(original_shape)
    state["exp_avg_sq"] = exp_avg_sq
    return out


def _update_statistics(
    grad: Tensor, state: dict[str, Any], step: int, max_dim: int, precondition_1d: bool, merge_dims: bool,
    data_format: str,
) -> None:  # fmt: skip
    """Shampoo's statistics :math:`L \\leftarrow \\mathrm{lerp}(L, G G^\\top, 1 - \\beta_s)` (one
    per dimension), the first eigenbases, and every ``precondition_frequency`` steps new ones."""
    GG = state["GG"]
    if grad.dim() == 1:
        if precondition_1d and grad.shape[0] <= max_dim:
            GG[0].lerp_((grad.unsqueeze(1) @ grad.unsqueeze(0)).to(GG[0].dtype), weight=1.0 - state["shampoo_beta"])
    else:
        if merge_dims:
            grad = _merge(grad, max_dim, data_format)
        for idx, dim in enumerate(grad.shape):
            if dim <= max_dim:
                outer = torch.tensordot(grad, grad, dims=[[*chain(range(idx), range(idx + 1, len(grad.shape)))]] * 2)
                GG[idx].lerp_(outer.to(GG[idx].dtype), weight=1.0 - state["shampoo_beta"])
    if state["Q"] is None:
        state["Q"] = _eigenbases(GG)
    if step > 0 and step % state["precondition_frequency"] == 0:
        state["Q"] = _refreshed_bases(state, max_dim, merge_dims, data_format)


def _statistics(p: Tensor, group: dict[str, Any]) -> list[Any]:
    """``GG`` at a parameter's first step: a zero matrix per preconditioned dimension, ``[]``
    for the others (over ``max_precondition_dim``; 1-D without ``precondition_1d``)."""
    grad, max_dim = p.grad, group["max_precondition_dim"]
    if grad.dim() == 1:
        if not group["precondition_1d"] or grad.shape[0] > max_dim:
            return [[]]
        return [torch.zeros(grad.shape[0], grad.shape[0], device=grad.device, dtype=grad.dtype)]
    if group["merge_dims"]:
        grad = _merge(grad, max_dim, group["data_format"])
    return [
        [] if sh > max_dim else torch.zeros(sh, sh, device=grad.device, dtype=grad.dtype) for sh in grad.shape
    ]


def _shampoo_beta(p: Tensor, group: dict[str, Any]) -> float:
    return group["shampoo_beta"] if group["shampoo_beta"] is not None else group["betas"][1]


@rule(
    state={
        "exp_avg": like(lambda p, group: torch.zeros_like(p.grad)),
        "exp_avg_sq": like(lambda p, group: torch.zeros_like(p.grad)),
        "GG": other(_statistics),
        "Q": other(lambda p, group: None),
        "precondition_frequency": scalar(lambda p, group: group["precondition_frequency"]),
        "shampoo_beta": scalar(_shampoo_beta),
    },
    complex=False,
)  # fmt: skip
def soap_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    max_precondition_dim: int,
    merge_dims: bool,
    precondition_1d: bool,
    correct_bias: bool,
    normalize_gradient: bool,
    eps: float,
    maximize: bool,
    data_format: str,
    step: int,
) -> None:
    r"""One SOAP step on ``param`` (in place), in pytorch-optimizer's op order.

    ``step`` is the group's step count *before* this step (``group["step"]``). For each
    dimension :math:`i` of the gradient :math:`G` (not over ``max_precondition_dim``) Shampoo's
    statistic :math:`L_i` and an orthogonal basis :math:`Q_i`; :math:`\tilde X = X \times_i Q_i`
    projects into the bases, :math:`X \times_i Q_i^\top` back. With :math:`t` = ``step``:

    .. math::
        m &\leftarrow \mathrm{lerp}(m, g, 1-\beta_1), \quad
            v \leftarrow \mathrm{lerp}(v, \tilde g^{\,2}, 1-\beta_2) \\
        N &= \Big(\tilde m / (\sqrt v + \epsilon)\Big) \times_i Q_i^\top, \quad
            N \leftarrow N / (\mathrm{rms}(N) + \epsilon) \text{ if normalize\_gradient} \\
        \theta &\leftarrow \theta - \gamma \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} N, \quad
            \theta \leftarrow \theta (1 - \gamma\lambda) \\
        L_i &\leftarrow \mathrm{lerp}\big(L_i, G_{(i)} G_{(i)}^\top, 1 - \beta_s\big)

    (:math:`G_{(i)}` is :math:`G` with dimension :math:`i` first, the others flattened). The
    bases are the eigenvectors of :math:`L_i` at the first step, and every
    ``precondition_frequency`` steps one power iteration :math:`Q_i \leftarrow
    \mathrm{QR}(L_i Q_i)` (columns sorted by estimated eigenvalue, :math:`v` permuted alike; the
    QR in float32 whatever the dtype, as pytorch-optimizer). The group's first step (``step``
    0) only accumulates statistics; a parameter's first step with a gradient accumulates them
    once more before its update (as pytorch-optimizer's ``init_group`` does).

    State: ``exp_avg`` (m), ``exp_avg_sq`` (v), ``GG`` (the :math:`L_i`; ``[]`` for a dimension
    not preconditioned), ``Q`` (the :math:`Q_i`), ``precondition_frequency`` and
    ``shampoo_beta`` (:math:`\beta_s`: the group's, or :math:`\beta_2`, fixed at the first step).
    """
    if state["Q"] is None:  # the parameter's first step: pytorch-optimizer's init_group
        _update_statistics(grad, state, step, max_precondition_dim, precondition_1d, merge_dims, data_format)
    if step == 0:
        return
    beta1, beta2 = betas
    step_size = lr
    if correct_bias:
        bias_correction1 = 1.0 - math.pow(beta1, step)
        bias_correction2_sq = math.sqrt(1.0 - math.pow(beta2, step))
        step_size *= bias_correction2_sq / bias_correction1
    if maximize:
        grad = torch.neg(grad)  # pytorch-optimizer negates p.grad itself (grad.neg_())
    Q = state["Q"]

    grad_projected = _project(grad, Q, merge_dims, max_precondition_dim, data_format, forward=True)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, weight=1.0 - beta1)
    exp_avg_sq.lerp_(grad_projected.square(), weight=1.0 - beta2)
    de_nom = exp_avg_sq.sqrt().add_(eps)
    exp_avg_projected = _project(exp_avg, Q, merge_dims, max_precondition_dim, data_format, forward=True)
    norm_grad = _project(exp_avg_projected / de_nom, Q, merge_dims, max_precondition_dim, data_format, forward=False)
    if normalize_gradient:
        norm_grad.div_(torch.mean(norm_grad.square()).sqrt_().add_(eps))
    param.add_(norm_grad, alpha=-step_size)
    if weight_decay != 0.0:
        param.mul_(1.0 - weight_decay * lr)
    _update_statistics(grad, state, step, max_precondition_dim, precondition_1d, merge_dims, data_format)


class SOAP(Optimizer):
    r"""SOAP, "ShampoO with Adam in the Preconditioner's eigenbasis", exactly as
    ``pytorch_optimizer.SOAP`` (pytorch-optimizer 4.1.0; the authors' code is not packaged).

    Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025
    (arXiv:2409.11321). Adam's moments are kept in the eigenbasis of Shampoo's Kronecker
    factors, which is refreshed every ``precondition_frequency`` steps by one power iteration.

    Args:
        params: real parameters, named parameters or parameter groups.
        lr (float): :math:`\gamma` (default: 3e-3).
        betas (tuple): :math:`(\beta_1, \beta_2)` (default: (0.95, 0.95)).
        shampoo_beta (float or None): :math:`\beta_s` for the statistics; None: :math:`\beta_2`.
        weight_decay (float): decoupled weight decay :math:`\lambda`, scaled by lr (default: 0.01).
        precondition_frequency (int): steps between refreshes of the bases (default: 10).
        max_precondition_dim (int): dimensions larger than this are not preconditioned
            (default: 10000).
        merge_dims (bool): merge neighbouring small dimensions before preconditioning
            (as pytorch-optimizer, a tensor that merges into one dimension raises).
        precondition_1d (bool): precondition 1-D parameters too (default: False).
        correct_bias (bool): Adam's bias correction (default: True).
        normalize_gradient (bool): divide the update by its rms (default: False).
        data_format (str): ``"channels_first"`` or ``"channels_last"`` (how 4-D tensors are
            merged).
        eps (float): :math:`\epsilon` (default: 1e-8).
        maximize (bool): maximize the objective (the gradient is negated for the update;
            unlike pytorch-optimizer, ``p.grad`` is left as it is).
        **kwargs: accepted by pytorch-optimizer and ignored there; refused here.

    State: the group's ``step`` (in the param group, as pytorch-optimizer); per parameter
    ``exp_avg``, ``exp_avg_sq``, ``GG`` and ``Q`` (lists of matrices), ``precondition_frequency``
    and ``shampoo_beta``. The first step of a group updates no parameter.
    """

    rule = soap_
    oracle = Oracle(
        "pytorch_optimizer:SOAP",
        note="bit for bit in every dtype, its float32 QR refresh of float64 bases included (matched, not improved)",
    )
    lab_lr = 3e-3
    configs = (
        {}, {"weight_decay": 0.1, "lr": 1e-3}, {"precondition_frequency": 3, "shampoo_beta": 0.9},
        {"precondition_1d": True, "correct_bias": False, "normalize_gradient": True, "maximize": True},
        {"merge_dims": True, "max_precondition_dim": 3, "precondition_frequency": 2, "weight_decay": 0.0},
        {"max_precondition_dim": 4, "precondition_frequency": 2, "betas": (0.9, 0.99), "eps": 1e-6},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        normalize_gradient: bool = False,
        data_format: str = "channels_first",
        eps: float = 1e-8,
        maximize: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(
                f"SOAP got unexpected keyword arguments {sorted(kwargs)} (pytorch-optimizer's SOAP "
                "ignores unknown arguments; optimkit refuses them)"
            )
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta{i + 1}: {beta} (must be in [0, 1))")
        if shampoo_beta is not None and not shampoo_beta >= 0.0:
            raise ValueError(f"Invalid shampoo_beta: {shampoo_beta} (must be non-negative)")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be non-negative)")
        if not precondition_frequency > 0:
            raise ValueError(f"Invalid precondition_frequency: {precondition_frequency} (must be positive)")
        if not max_precondition_dim > 0:
            raise ValueError(f"Invalid max_precondition_dim: {max_precondition_dim} (must be positive)")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be non-negative)")
        if data_format not in _FORMATS:
            raise ValueError(f"Invalid data_format: {data_format!r} (must be 'channels_first' or 'channels_last')")
        defaults = dict(
            lr=lr, betas=betas, shampoo_beta=shampoo_beta, weight_decay=weight_decay,
            precondition_frequency=precondition_frequency, max_precondition_dim=max_precondition_dim,
            merge_dims=merge_dims, precondition_1d=precondition_1d, correct_bias=correct_bias,
            normalize_gradient=normalize_gradient, eps=eps, data_format=data_format, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        for p in params:
            if torch.is_complex(p):
                raise RuntimeError("SOAP does not support complex parameters")

    def _step_group(self, group: dict[str, Any]) -> None:
        # The group's step count, as pytorch-optimizer keeps it: counted at every step()
        # (with or without gradients); the rule gets the count before this step. What
        # pytorch-optimizer checks before counting (its init_group: sparse and complex
        # gradients, new parameters' dimensions to merge) raises here before counting too;
        # an error during the updates leaves the step counted, as there.
        group.setdefault("step", 0)
        params, _ = self._params_with_grad(group)
        self._check_group(group, params)
        if group["merge_dims"]:
            for p in params:
                if not self.state.get(p) and p.grad.dim() != 1:
                    _merge(p.grad, group["max_precondition_dim"], group["data_format"])
        try:
            super()._step_group(group)
        finally:
            group["step"] += 1

"""Muon (Jordan et al. 2024): momentum orthogonalized by a Newton-Schulz iteration."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Optimizer
from ..rule import like, rule

__all__ = [
    "Muon", "muon_", "zeropower_via_newtonschulz", "check_muon_args", "check_matrices", "check_muon_step",
]  # fmt: skip

# Keller Jordan's quintic coefficients (maximal slope at zero) and defaults, as in torch.
EPS = 1e-7
DEFAULT_A = 3.4445
DEFAULT_B = -4.7750
DEFAULT_C = 2.0315
DEFAULT_NS_STEPS = 5


def _check_ns_args(grad: Tensor, ns_coefficients: tuple[float, ...], ns_steps: int) -> None:
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(grad.shape) != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")


def zeropower_via_newtonschulz(
    grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> Tensor:
    r"""Approximately orthogonalize the matrix ``grad`` (its "zeroth power" :math:`UV^\top`), in bfloat16.

    With :math:`X_0 = G / \max(\|G\|_F, \epsilon)` (transposed so that it is wide), ``ns_steps``
    times :math:`A = X X^\top,\ X \leftarrow aX + (bA + cA^2) X`. The coefficients push the
    singular values towards roughly 1 (not exactly: they land in about (0.5, 1.5)).
    """
    _check_ns_args(grad, ns_coefficients, ns_steps)
    a, b, c = ns_coefficients
    tall = grad.size(0) > grad.size(1)
    x = grad.bfloat16()
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    x.div_(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.addmm(x, poly, x, beta=a)  # a*X + poly@X
    return x.T if tall else x


def adjusted_lr(lr: float | Tensor, adjust_lr_fn: str | None, shape: torch.Size) -> float | Tensor:
    """Scale ``lr`` for an ``A x B`` matrix: ``"original"`` (Keller Jordan, the default)
    :math:`\\sqrt{\\max(1, A/B)}`; ``"match_rms_adamw"`` (Moonshot) :math:`0.2\\sqrt{\\max(A, B)}`."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = 1.0
    return lr * ratio


def check_muon_args(lr: float | Tensor, momentum: float, weight_decay: float, adjust_lr_fn: str | None) -> None:
    """torch's constructor checks of Muon's hyperparameters, with its messages."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    if not 0.0 <= momentum:
        raise ValueError(f"momentum should be >= 0 but is: {momentum}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
    if adjust_lr_fn is not None and adjust_lr_fn not in ("original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


def check_matrices(params: list[Tensor]) -> None:
    """torch's construction-time check: Muon takes 2-D parameters only."""
    for p in params:
        if p.ndim != 2:
            raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: {p.size()}")


def check_muon_step(group: dict[str, Any], params: list[Tensor]) -> None:
    """torch's per-step checks, in its order (complex before sparse, parameter by parameter).

    torch raises the shape and Newton-Schulz checks from inside the update of the first
    parameter, after mixing its gradient into the momentum buffer; optimkit raises before
    anything changes."""
    for p in params:
        if torch.is_complex(p):
            raise RuntimeError("Muon does not support complex parameters")
        if p.grad.is_sparse:
            raise RuntimeError("Muon does not support sparse gradients")
    for p in params:
        if p.grad.ndim != 2:
            raise ValueError("Param gradient must be a 2D matrix")
        _check_ns_args(p.grad, group["ns_coefficients"], group["ns_steps"])


# torch shapes the buffer after the gradient.
@rule(
    state={"momentum_buffer": like(lambda p, group: torch.zeros_like(p.grad, memory_format=torch.preserve_format))},
    complex=False, matrix_only=True,
)  # fmt: skip
def muon_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    eps: float,
    ns_steps: int,
    adjust_lr_fn: str | None,
) -> None:
    r"""One Muon step on the matrix ``param`` (in place).

    .. math::
        B &\leftarrow \mathrm{lerp}(B, g, 1-\mu) \\
        \tilde B &= \mathrm{lerp}(g, B, \mu) \text{ (Nesterov) or } B \\
        O &= \mathrm{NS}^{(a,b,c)}_k(\tilde B; \epsilon) \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) - \mathrm{AdjustLR}(\gamma, \mathrm{shape})\, O

    State: ``momentum_buffer`` (B). There is no step count.
    """
    if grad.ndim != 2:
        raise ValueError("Param gradient must be a 2D matrix")
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf
    update = zeropower_via_newtonschulz(update, ns_coefficients, ns_steps, eps)
    scaled_lr = adjusted_lr(lr, adjust_lr_fn, param.shape)
    param.mul_(1 - lr * weight_decay)
    param.add_(update, alpha=-scaled_lr)  # the bfloat16 update is promoted by add_


class Muon(Optimizer):
    r"""Muon, exactly as ``torch.optim.Muon``: SGD-momentum whose update is orthogonalized
    by a Newton-Schulz iteration, for the 2-D weights of hidden layers (use e.g. AdamW for
    biases and embeddings).

    Keller Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024
    (https://kellerjordan.github.io/posts/muon/); the ``"match_rms_adamw"`` learning-rate
    adjustment is from Liu et al., "Muon is Scalable for LLM Training", 2025.

    Args:
        params: 2-D real parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        weight_decay (float): decoupled weight decay :math:`\lambda` (default: 0.1).
        momentum (float): :math:`\mu` (default: 0.95).
        nesterov (bool): Nesterov momentum (default: True).
        ns_coefficients (tuple of 3 floats): :math:`(a, b, c)` (default: (3.4445, -4.7750, 2.0315)).
        eps (float): floor of the norm the update is divided by (default: 1e-7).
        ns_steps (int): Newton-Schulz iterations, fewer than 100 (default: 5).
        adjust_lr_fn (str or None): ``"original"`` (the default, also for None) or ``"match_rms_adamw"``.

    State per parameter: ``momentum_buffer``.
    """

    rule = muon_
    lab_lr = 0.02
    configs = (
        {}, {"lr": 0.02}, {"lr": torch.tensor(0.01)}, {"nesterov": False}, {"adjust_lr_fn": "original"},
        {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01}, {"ns_steps": 3, "momentum": 0.8},
        {"weight_decay": 0.0, "nesterov": False, "momentum": 0.0},
        {"ns_coefficients": (3.4, -4.7, 2.0), "eps": 1e-3, "ns_steps": 6},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (DEFAULT_A, DEFAULT_B, DEFAULT_C),
        eps: float = EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
    ) -> None:
        check_muon_args(lr, momentum, weight_decay, adjust_lr_fn)
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        )  # fmt: skip
        super().__init__(params, defaults)
        # Checked at construction only, as in torch (not for groups added later).
        for group in self.param_groups:
            check_matrices(group["params"])

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        check_muon_step(group, params)

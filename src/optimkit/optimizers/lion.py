"""Lion: the sign of an interpolation of momentum and gradient (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..ops import add_scaled
from ..optimizer import Optimizer
from ..rule import Rule, moment, rule
from ..transforms import caution, cautious_rule
from ._checks import check_betas, check_cautious, check_lr


@rule(state={"exp_avg": moment()}, elementwise=True, complex=False)
def lion_(param: Tensor, grad: Tensor, state: dict[str, Any], *, lr: float | Tensor, betas: tuple[float, float],
          weight_decay: float, decoupled_weight_decay: bool, init_lr: float, cautious: bool = False) -> None:  # fmt: skip
    r"""One Lion step on ``param`` (in place), in lion-pytorch's op order.

    .. math::
        \theta &\leftarrow \theta (1 - \gamma\lambda) \quad
            (\lambda / \gamma_0 \text{ with decoupled weight decay}) \\
        \theta &\leftarrow \theta - \gamma\, \operatorname{sign}(\beta_1 m + (1-\beta_1) g) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g

    With ``cautious``, the sign update is masked where it disagrees with :math:`g`
    (:func:`~optimkit.transforms.caution`, timm's ``caution=True``) before it is applied.

    State: ``exp_avg`` (m)."""
    beta1, beta2 = betas
    exp_avg = state["exp_avg"]
    wd = weight_decay / init_lr if decoupled_weight_decay else weight_decay
    param.mul_(1.0 - lr * wd)
    # (add_scaled: under compile=True a tensor alpha of an out-of-place add breaks the graph)
    update = add_scaled(exp_avg.clone().mul_(beta1), grad, 1.0 - beta1).sgn_()
    if cautious:
        update = caution(update, grad)
    param.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)


class Lion(Optimizer):
    r"""Lion, "EvoLved Sign Momentum": Chen et al., *Symbolic Discovery of Optimization
    Algorithms* (NeurIPS 2023), exactly as the authors' ``lion_pytorch.Lion``.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float): :math:`\gamma` (default: 1e-4; 3-10x below AdamW's).
        betas (tuple of floats): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.99)).
        weight_decay (float): decoupled weight decay :math:`\lambda` (default: 0).
        use_triton (bool): lion-pytorch's Triton kernel: not here (``compile=True`` fuses the loop).
        decoupled_weight_decay (bool): divide :math:`\lambda` by the constructor's lr
            :math:`\gamma_0` (kept in each group as ``init_lr``), so the decay follows the schedule.
        cautious (bool): the cautious mask (Liang et al. 2024), as timm 1.0.31's Lion
            ``caution=True`` (not in lion-pytorch): see :class:`optimkit.Adam`'s ``cautious``.
    """

    rule = lion_
    oracle = "lion_pytorch:Lion"
    lab_lr = 1e-3
    configs = ({}, {"lr": 1e-3, "weight_decay": 0.1}, {"betas": (0.95, 0.98)},
               {"lr": 3e-4, "weight_decay": 1e-2, "decoupled_weight_decay": True})  # fmt: skip

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, use_triton: bool = False, decoupled_weight_decay: bool = False,
                 *, cautious: bool = False, compile: bool = False) -> None:  # fmt: skip
        check_lr(lr)
        check_betas(betas)
        check_cautious(cautious, compile=compile)
        if use_triton:
            raise ValueError("use_triton=True is lion-pytorch's CUDA kernel; optimkit's fused loop is compile=True")
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, init_lr=lr,
                        **({"cautious": True} if cautious else {}))  # fmt: skip
        super().__init__(params, defaults, compile=compile)

    def _rule_for(self, group: dict[str, Any]) -> Rule:
        return cautious_rule(self.rule, group)

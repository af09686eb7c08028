"""Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): one rule, one flag."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import as_real, differentiating, item, to_scalar
from ..optimizer import Optimizer
from ..rule import Rule, moment, rule, step, when
from ..transforms import caution, cautious_rule, decay_weights, running_max
from ._checks import check_betas, check_cautious, check_impl_flags, check_lr, check_nonneg

__all__ = ["Adam", "AdamW", "adam_", "check_adam_args"]


@rule(
    state={"step": step, "exp_avg": moment(), "exp_avg_sq": moment(nonnegative=True),
           "max_exp_avg_sq": when("amsgrad", moment(nonnegative=True))},
    elementwise=True, fused="adam",
)  # fmt: skip
def adam_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float | Tensor,
    betas: tuple[float | Tensor, float | Tensor],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool,
    cautious: bool = False,
) -> None:
    r"""One Adam step on ``param`` (in place).

    .. math::
        t &\leftarrow t + 1 \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) \text{ (decoupled) or }
            g \leftarrow g + \lambda\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ (amsgrad) or } v \\
        \theta &\leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    With ``cautious``, :math:`m` in the last line is masked where it disagrees in sign with
    :math:`g` (:func:`~optimkit.transforms.caution`; a whole-tensor mean, so the class steps
    such a group per tensor).

    State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (amsgrad).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    step_t = state["step"]
    step_t += 1
    grad = decay_weights(param, grad, lr=lr, weight_decay=weight_decay, decoupled=decoupled_weight_decay)
    param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq = as_real(
        param, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq")
    )
    # A tensor beta1 is used in the parameter's dtype for the moment update (as torch does).
    weight1 = 1 - (beta1.to(param.device, param.dtype) if isinstance(beta1, Tensor) else beta1)
    exp_avg.lerp_(grad, weight1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    step = item(step_t)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        exp_avg_sq = running_max(max_exp_avg_sq, exp_avg_sq)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if cautious:  # timm's caution=True: m masked by sign(m) == sign(g), a new tensor
        update = caution(exp_avg, grad)
    else:
        update = exp_avg.clone() if differentiating() else exp_avg
    param.addcdiv_(update, denom, value=-step_size)


def check_adam_args(lr: float | Tensor, betas: tuple[float | Tensor, float | Tensor], eps: float,
                    weight_decay: float, *, foreach: bool | None, capturable: bool) -> tuple[Any, Any]:  # fmt: skip
    """torch's constructor checks of Adam's hyperparameters, with its messages; returns the
    betas with one-element tensors as 0-d."""
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    check_lr(lr)
    check_nonneg(eps, "epsilon value")
    check_betas(betas)
    check_nonneg(weight_decay, "weight_decay value")
    if not (
        (isinstance(betas[0], float) and isinstance(betas[1], float))
        or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if not capturable and foreach:
                raise ValueError(
                    f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
    return tuple(map(to_scalar, betas))


class Adam(Optimizer):
    r"""Adam, exactly as ``torch.optim.Adam``; ``decoupled_weight_decay=True`` is AdamW.

    Args:
        params: parameters, named parameters or parameter groups.
        lr (float or Tensor): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of floats or of Tensors): :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps (float): :math:`\epsilon` added to the denominator (default: 1e-8).
        weight_decay (float): :math:`\lambda` (default: 0).
        amsgrad (bool): use the maximum of past second moments (Reddi et al. 2018).
        maximize (bool): maximize the objective.
        decoupled_weight_decay (bool): decay the weights directly (AdamW) instead of adding
            :math:`\lambda\theta` to the gradient.
        cautious (bool): the cautious mask of Liang et al. 2024 (C-Optim), as timm 1.0.31's
            ``caution=True``: the update keeps only the components whose sign agrees with the
            gradient's, rescaled by the inverse fraction kept (:func:`optimkit.transforms.caution`).
            Not torch's; it needs a mean over each whole parameter, so a cautious group is
            stepped per tensor (gathered under FSDP2), not packed, fused or compiled
            (``fused=True``/``compile=True`` with it are refused). Groups carry the key only
            when it is True, so state dicts stay torch's otherwise.
        foreach, capturable, differentiable, fused, compile: see the README's "Implementation flags".

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    rule = adam_
    _sparse_error = "Adam does not support sparse gradients, please consider SparseAdam instead"
    lab_lr = 0.01
    configs = (
        {}, {"lr": 0.01}, {"lr": torch.tensor(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True}, {"betas": (0.8, 0.9), "eps": 1e-6},
        {"betas": (torch.tensor(0.8), torch.tensor(0.9))}, {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"amsgrad": True, "maximize": True, "lr": torch.tensor(0.02)},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        cautious: bool = False,
        compile: bool = False,
    ) -> None:
        betas = check_adam_args(lr, betas, eps, weight_decay, foreach=foreach, capturable=capturable)
        check_cautious(cautious, fused=fused, compile=compile)
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=decoupled_weight_decay,
            **({"cautious": True} if cautious else {}),
        )  # fmt: skip
        super().__init__(params, defaults, compile=compile)
        check_impl_flags(foreach, fused, differentiable)

    def _rule_for(self, group: dict[str, Any]) -> Rule:
        return cautious_rule(self.rule, group)


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay, exactly as ``torch.optim.AdamW``.

    The same rule as :class:`Adam` with ``decoupled_weight_decay=True``; the default
    ``weight_decay`` is 1e-2. See :class:`Adam` for the arguments and state.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        cautious: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, cautious=cautious, compile=compile,
        )  # fmt: skip

    configs = (
        {}, {"lr": 0.01}, {"weight_decay": 0.1, "maximize": True}, {"weight_decay": 0.1, "amsgrad": True},
        {"lr": torch.tensor(0.01), "betas": (0.8, 0.95)},
    )  # fmt: skip

    def _normalize_group(self, group: dict[str, Any]) -> None:
        group["decoupled_weight_decay"] = True

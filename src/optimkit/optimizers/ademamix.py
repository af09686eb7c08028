"""AdEMAMix: Adam with a mixture of a fast and a slow momentum (Pagliardini et al. 2024)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..ops import item, taken
from ..optimizer import Optimizer, Oracle
from ..rule import moment, rule, step
from ._checks import check_lr, check_nonneg

__all__ = ["AdEMAMix", "ademamix_"]


# The scalar schedule in the oracle's math (Python floats); under torch.compile the same on
# 0-d tensors, so that one graph serves every step.
def _log(x: Any) -> Any:
    return torch.log(x) if isinstance(x, Tensor) else math.log(x)


def _exp(x: Any) -> Any:
    return torch.exp(x) if isinstance(x, Tensor) else math.exp(x)


def _sqrt(x: Any) -> Any:
    return torch.sqrt(x) if isinstance(x, Tensor) else math.sqrt(x)


def _min(x: Any, y: Any) -> Any:
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        return torch.minimum(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64))
    return min(x, y)


@rule(
    state={"step": step, "exp_avg_fast": moment(), "exp_avg_slow": moment(),
           "exp_avg_sq": moment(nonnegative=True)},
    elementwise=True, complex=False,
)  # fmt: skip
def ademamix_(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: tuple[float, float, float],
    alpha: float,
    t_alpha: int | None,
    t_beta3: int | None,
    eps: float,
    weight_decay: float,
) -> None:
    r"""One AdEMAMix step on ``param`` (in place), as bitsandbytes' 32-bit CPU kernel
    (``optimizer_update_32bit``, ``"ademamix"``) computes it, in ``param``'s dtype.

    .. math::
        t &\leftarrow t + 1, \quad
            \alpha_t = \min\!\big(\tfrac{t\alpha}{T_\alpha}, \alpha\big), \quad
            \beta_{3,t} = \min\!\Big(\exp\frac{\ln\beta_1 \ln\beta_3}
                {(1 - t/T_{\beta_3})\ln\beta_3 + (t/T_{\beta_3})\ln\beta_1}, \beta_3\Big)
            \quad \text{(each only with } T \text{ set)} \\
        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g, \quad
            m_2 \leftarrow \beta_{3,t} m_2 + (1-\beta_{3,t}) g, \quad
            \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta(1 - \gamma\lambda) \\
        \theta &\leftarrow \theta - \gamma\,
            \frac{m_1/(1-\beta_1^t) + \alpha_t m_2}{\sqrt{\nu}/\sqrt{1-\beta_2^t} + \epsilon}

    State: ``step`` (a scalar tensor), ``exp_avg_fast`` (:math:`m_1`), ``exp_avg_slow``
    (:math:`m_2`), ``exp_avg_sq`` (:math:`\nu`) -- the names of the authors' reference code
    (bitsandbytes stacks :math:`m_1, m_2` into one float32 ``state1`` and keeps :math:`\nu` in
    ``state2``).
    """
    beta1, beta2, beta3 = betas
    m1, m2, nu = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
    step_t = state["step"]
    step_t += 1
    step = item(step_t)

    if t_alpha is not None:
        alpha = _min(step * alpha / t_alpha, alpha)
    if t_beta3 is not None:
        ln_beta1 = _log(beta1)
        ln_beta3 = _log(beta3)
        step_scale = step / t_beta3
        beta3 = _min(_exp((ln_beta1 * ln_beta3) / (((1 - step_scale) * ln_beta3) + (step_scale * ln_beta1))), beta3)

    m1.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    m2.mul_(beta3).add_(grad, alpha=1.0 - beta3)
    nu.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

    correction1 = 1.0 - beta1**step
    correction2 = _sqrt(1.0 - beta2**step)
    if taken(weight_decay > 0.0):
        param.mul_(1.0 - lr * weight_decay)
    mixed_momentum = (m1 / correction1) + (alpha * m2)
    adaptive_term = (nu.sqrt() / correction2) + eps
    param.add_(mixed_momentum / adaptive_term, alpha=-lr)


class AdEMAMix(Optimizer):
    r"""AdEMAMix: Pagliardini, Ablin & Grangier, *The AdEMAMix Optimizer: Better, Faster,
    Older* (ICLR 2025; arXiv 2409.03137), as bitsandbytes' ``AdEMAMix`` with 32-bit state.

    Adam's momentum is replaced by a mix of a fast EMA (:math:`\beta_1`) and a slow one
    (:math:`\beta_3`, weighted by :math:`\alpha`), optionally warmed up over ``t_alpha`` and
    ``t_beta3`` steps; weight decay is decoupled.

    The oracle is bitsandbytes' kernel (on CPU its ``optimizer_update_32bit``; its
    ``_ReferenceAdEMAMix`` compounds the warm-up schedules across parameters and is not
    used). That kernel computes in float32 whatever the parameter's dtype and keeps float32
    state. Here the same formula runs in the parameter's dtype with state of that dtype:
    bit for bit with bitsandbytes for float32 parameters; for float64 in full precision
    (bitsandbytes rounds float64 parameters to float32 at every step, so the two differ by
    float32 rounding); for bfloat16/float16 in the parameter's dtype (bitsandbytes: float32
    math and state, one rounding per step).

    Args:
        params: real parameters (complex ones are refused), named parameters or parameter groups.
        lr (float): learning rate :math:`\gamma` (default: 1e-3).
        betas (tuple of 3 floats): :math:`(\beta_1, \beta_2, \beta_3)` (default: (0.9, 0.999, 0.9999)).
        alpha (float): weight :math:`\alpha` of the slow momentum (default: 5.0).
        t_alpha (int or None): warm-up steps :math:`T_\alpha` of :math:`\alpha` (default: None, off).
        t_beta3 (int or None): warm-up steps :math:`T_{\beta_3}` of :math:`\beta_3` (default: None, off).
        eps (float): :math:`\epsilon` (default: 1e-8).
        weight_decay (float): decoupled weight decay :math:`\lambda` (default: 1e-2).
        min_8bit_size (int): bitsandbytes' threshold for 8-bit state: accepted, without
            effect (the state is never quantized here).
        is_paged (bool): bitsandbytes' paged (CUDA unified memory) state: refused.
        compile (bool): run the rule under ``torch.compile`` (see the README).

    bitsandbytes' ``optim_bits`` is not an argument: the state is never 8-bit (the test
    tables build the oracle with ``optim_bits=32``).

    State per parameter: ``step``, ``exp_avg_fast``, ``exp_avg_slow``, ``exp_avg_sq``.
    """

    rule = ademamix_
    oracle = Oracle(
        "bitsandbytes.optim:AdEMAMix", kwargs={"optim_bits": 32}, exact=False,
        tolerance={torch.float64: 1e-5},
        note="bit for bit in float32 (parameters; the state is named and shaped as the authors' code, "
        "tests/test_adam_family.py maps it to bitsandbytes' state1/state2); bitsandbytes computes "
        "float64 in float32, optimkit in full precision",
    )  # fmt: skip
    lab_lr = 1e-2
    configs = (
        {}, {"lr": 1e-2, "weight_decay": 0.1}, {"t_alpha": 4, "t_beta3": 6},
        {"betas": (0.8, 0.99, 0.999), "alpha": 2.0, "eps": 1e-6, "weight_decay": 0.0},
        {"lr": 1e-2, "alpha": 8.0, "t_alpha": 10, "t_beta3": 3, "weight_decay": 0.05},
    )  # fmt: skip

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha: int | None = None,
        t_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        min_8bit_size: int = 4096,
        is_paged: bool = False,
        *,
        compile: bool = False,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps, "epsilon value")
        if len(betas) != 3:
            raise ValueError(f"betas must be three floats (beta1, beta2, beta3), got {betas!r}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        check_nonneg(weight_decay, "weight_decay value")
        if is_paged:
            raise ValueError(
                "is_paged=True is bitsandbytes' paged CUDA memory for the state; optimkit keeps ordinary tensors"
            )
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha, t_alpha=t_alpha, t_beta3=t_beta3
        )
        super().__init__(params, defaults, compile=compile)

    def _check_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        super()._check_group(group, params)
        if any(torch.is_complex(p) for p in params):
            # bitsandbytes would drop the imaginary parts (``g.float()``); refuse instead.
            raise RuntimeError("AdEMAMix does not support complex parameters")

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        hyper = super()._hyper(group)
        # bitsandbytes tests the warm-ups for truth: 0 (or None) turns one off.
        for key in ("t_alpha", "t_beta3"):
            if not hyper[key]:
                hyper[key] = None
        return hyper

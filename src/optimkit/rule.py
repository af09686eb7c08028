r"""An update rule, declared once: its math, its state, and what it can do.

An optimizer's step is one function of tensor math on one tensor, in place::

    @rule(state={"step": step, "exp_avg": zeros, "exp_avg_sq": zeros,
                 "max_exp_avg_sq": when("amsgrad", zeros)},
          elementwise=True, fused="adam")
    def adam_(param, grad, state, *, lr, betas, eps, weight_decay, amsgrad, maximize, ...):
        ...

Everything else about the optimizer is read from this declaration:

* **the state** -- each entry's name (torch's key), how it starts and its *kind*: shaped like
  the parameter (``zeros``, ``full``, ``like``), a per-parameter scalar (``step``, ``scalar``)
  or some other shape (``other``: Adafactor's row and column statistics). ``when`` makes an
  entry depend on the group (``max_exp_avg_sq`` only with ``amsgrad``); ``created`` marks one
  the rule makes itself (SGD's momentum buffer starts as the first gradient). The execution
  strategies move the param-shaped entries into packs and chunks and keep the scalars per
  parameter -- by kind, never by guessing from a tensor's shape (a 0-dim parameter's state is
  0-dim too);
* **the hyperparameters** -- the rule's keyword-only arguments, named as the group's keys, so
  ``group["betas"]`` reaches the rule as ``betas`` with no renaming table;
* **the capabilities** -- elementwise, complex, sparse gradients, a torch fused kernel, a
  closure, matrices only -- which the registry, the tests, the lab and the execution seam read.

A rule stays an ordinary function: ``adam_(p, g, state, lr=1e-3, ...)`` runs one step.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .ops import to_scalar

__all__ = [
    "Capabilities", "Rule", "Slot", "rule", "zeros", "full", "like", "step", "scalar", "other",
    "created", "when", "moment", "step_tensor", "scalar_dtype",
]  # fmt: skip

Init = Callable[[Tensor, dict[str, Any]], Any]


def scalar_dtype() -> torch.dtype:
    """torch's dtype for scalar state: float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def step_tensor(p: Tensor, group: dict[str, Any], value: float = 0.0) -> Tensor:
    """A step counter as torch stores it: a CPU scalar tensor, or float32 on the parameter's
    device when the group is fused or capturable."""
    dtype = torch.float32 if group.get("fused") else scalar_dtype()
    device = p.device if group.get("fused") or group.get("capturable") else "cpu"
    return torch.tensor(value, dtype=dtype, device=device)


@dataclass(frozen=True)
class Slot:
    """One state entry of a rule.

    Attributes:
        init: ``init(param, group)`` makes the entry at the parameter's first step; None when
            the rule creates it itself.
        kind: ``"param"`` (the parameter's shape), ``"scalar"`` (one number per parameter,
            e.g. ``step``) or ``"other"`` (any other shape).
        cond: ``cond(param, group)``: whether the entry exists (None: always).
        encodable: a param-shaped moment estimate that a state encoding may store in bf16,
            8, 4 bits or FP8 (:mod:`optimkit.execution.encodings`): ``"signed"`` or
            ``"unsigned"`` (never negative: a second moment, which gets the unsigned map).
            None: always kept as the rule makes it (an iterate such as Schedule-Free's ``z``,
            ASGD's average, Rprop's step sizes -- low precision would change the method).
    """

    init: Init | None
    kind: Literal["param", "scalar", "other"] = "param"
    cond: Callable[[Tensor, dict[str, Any]], bool] | None = None
    encodable: Literal["signed", "unsigned"] | None = None

    def wanted(self, p: Tensor, group: dict[str, Any]) -> bool:
        return self.cond is None or bool(self.cond(p, group))


def _zeros(p: Tensor, group: dict[str, Any]) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


#: Zeros shaped like the parameter (``exp_avg``, ``exp_avg_sq``, ...).
zeros = Slot(_zeros)
#: torch's step counter: a scalar tensor (see :func:`step_tensor`).
step = Slot(step_tensor, "scalar")
#: Param-shaped, created by the rule (SGD's momentum buffer is the first gradient).
created = Slot(None)


def full(value: Callable[[Tensor, dict[str, Any]], Any]) -> Slot:
    """Param-shaped, filled with ``value(param, group)`` (Adagrad's initial accumulator)."""

    def init(p: Tensor, group: dict[str, Any]) -> Tensor:
        return torch.full_like(p, value(p, group), memory_format=torch.preserve_format)

    return Slot(init)


def like(init: Init) -> Slot:
    """Param-shaped, made by ``init(param, group)``."""
    return Slot(init)


def scalar(init: Init) -> Slot:
    """One number per parameter, made by ``init(param, group)`` (NAdam's ``mu_product``)."""
    return Slot(init, "scalar")


def other(init: Init) -> Slot:
    """Neither param-shaped nor scalar (Adafactor's factored row and column variances)."""
    return Slot(init, "other")


def when(cond: str | Callable[[Tensor, dict[str, Any]], bool], slot: Slot) -> Slot:
    """``slot`` only where ``cond`` holds: a group key (``when("amsgrad", zeros)``) or a
    function ``cond(param, group)``."""
    test = (lambda p, group: bool(group[cond])) if isinstance(cond, str) else cond
    return dataclasses.replace(slot, cond=test)


def moment(slot: Slot = zeros, *, nonnegative: bool = False) -> Slot:
    """``slot`` (param-shaped) as a moment estimate, which a state encoding may store in low
    precision (``state_encoding="8bit"``...); ``nonnegative`` for one that is never negative
    (``exp_avg_sq``), which gets the encoding's unsigned map."""
    if slot.kind != "param":
        raise ValueError("only param-shaped state can be a moment")
    return dataclasses.replace(slot, encodable="unsigned" if nonnegative else "signed")


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer supports, declared once with its rule.

    Attributes:
        elementwise: every output element depends only on the same element of the inputs
            (plus scalars): the rule may run on chunks of a tensor, packs of tensors, local
            shards, or compiled into one loop.
        complex: complex parameters (viewed as pairs of reals, torch's convention).
        sparse: ``"no"``, ``"yes"`` (dense and sparse gradients) or ``"only"`` (SparseAdam).
        fused: the name of torch's fused kernel (``fused=True``), or None.
        closure: ``step`` needs a closure (LBFGS).
        matrix_only: 2-D parameters only (Muon).
        chunk_big: feed big tensors in chunks (pays off when the rule makes full-size
            temporaries; rules that make none or one are faster whole, see execution.packed).
        scope: ``"tensor"``: ``fn(param, grad, state, **hyper)`` once per parameter;
            ``"group"``: ``fn(params, grads, states, group, **hyper)`` once per group, for
            rules that need sums over the whole group (Prodigy's and D-Adaptation's step
            size). Such a rule gets DTensors whole under FSDP2, so its sums are global.
    """

    elementwise: bool = False
    complex: bool = True
    sparse: Literal["no", "yes", "only"] = "no"
    fused: str | None = None
    closure: bool = False
    matrix_only: bool = False
    chunk_big: bool = True
    scope: Literal["tensor", "group"] = "tensor"


class Rule:
    """An update rule: ``fn(param, grad, state, **hyper)`` with its declared state and
    capabilities. Calling the rule calls ``fn``."""

    def __init__(self, fn: Callable[..., None], state: Mapping[str, Slot], caps: Capabilities) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.state = dict(state)
        self.caps = caps
        kw_only = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        self.hyper = tuple(p.name for p in kw_only)
        # A keyword-only argument with a default is optional: a group without the key (a state
        # dict of torch's, a group of an older version) leaves it at its default.
        self.optional = frozenset(p.name for p in kw_only if p.default is not p.empty)
        self.scalar_keys = frozenset(k for k, s in self.state.items() if s.kind == "scalar")
        self.param_keys = frozenset(k for k, s in self.state.items() if s.kind == "param")
        #: Param-shaped moments a state encoding may store in low precision, with their sign.
        self.encodable = {k: s.encodable for k, s in self.state.items() if s.encodable is not None}
        self._variants: dict[tuple, Rule] = {}

    def __call__(self, *args: Any, **hyper: Any) -> None:
        self.fn(*args, **hyper)

    def __repr__(self) -> str:
        return f"<rule {self.__name__}>"

    def init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The state of ``p`` at its first step: every declared entry the group wants."""
        return {
            k: s.init(p, group) for k, s in self.state.items() if s.init is not None and s.wanted(p, group)
        }

    def hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """The rule's keyword arguments from ``group`` (one-element tensors as 0-d)."""
        return {k: _scalars(group[k]) for k in self.hyper if k in group or k not in self.optional}

    def variant(self, **caps: Any) -> Rule:
        """The same function and state with other capabilities (a cautious Adam step is
        not elementwise, see :func:`optimkit.transforms.caution`); made once per rule."""
        key = tuple(sorted(caps.items()))
        if key not in self._variants:
            self._variants[key] = Rule(self.fn, self.state, dataclasses.replace(self.caps, **caps))
        return self._variants[key]


def _scalars(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(map(to_scalar, x))
    return to_scalar(x)


def rule(*, state: Mapping[str, Slot] | None = None, **caps: Any) -> Callable[[Callable[..., None]], Rule]:
    """Declare ``fn`` an update rule with ``state`` and capabilities (see :class:`Capabilities`)."""

    def declare(fn: Callable[..., None]) -> Rule:
        return Rule(fn, state or {}, Capabilities(**caps))

    return declare

"""The one registry of optimizers: name -> class, capabilities and configurations.

It drives the test tables (every config is checked against torch.optim bit for bit),
``create_optimizer``, the CLI and the lab's list of optimizers. Adding an optimizer means
adding one ``OptimizerSpec`` here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import adagrad, adam, sgd

__all__ = ["OptimizerSpec", "REGISTRY", "get_spec", "create_optimizer", "names"]


@dataclass(frozen=True)
class OptimizerSpec:
    """What the project knows about one optimizer.

    Attributes:
        name: registry key (lower case, e.g. ``"adamw"``).
        cls: the optimkit class.
        configs: constructor keyword arguments that together exercise every option; the
            exactness table runs each against ``torch.optim`` (the first one is the default).
        lab_lr: a learning rate that works on small problems (the lab's starting point).
        closure: ``step`` needs a closure (LBFGS).
        complex: supports complex parameters.
        sparse: ``"no"``, ``"yes"`` (dense and sparse gradients) or ``"only"`` (SparseAdam).
        matrix_only: only 2-D parameters (Muon).
        fused: accepts ``fused=True`` (torch has a fused kernel).
        elementwise: the rule is elementwise, so a flat buffer of many parameters can be fed
            to it at once (the fast execution strategies rely on this).
    """

    name: str
    cls: type
    configs: tuple[dict[str, Any], ...]
    lab_lr: float
    closure: bool = False
    complex: bool = True
    sparse: str = "no"
    matrix_only: bool = False
    fused: bool = False
    elementwise: bool = True
    torch_name: str = field(default="")

    @property
    def torch_cls(self) -> type | None:
        """The torch.optim class of the same name (None where this torch lacks it)."""
        return getattr(torch.optim, self.torch_name or self.cls.__name__, None)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x)


REGISTRY: dict[str, OptimizerSpec] = {}


def _register(spec: OptimizerSpec) -> None:
    REGISTRY[spec.name] = spec


_register(OptimizerSpec(
    "sgd", sgd.SGD, lab_lr=0.01, sparse="yes", fused=True,
    configs=(
        {}, {"lr": 0.01}, {"lr": _t(0.01)}, {"weight_decay": 0.5}, {"momentum": 0.9},
        {"weight_decay": 0.1, "maximize": True}, {"momentum": 0.9, "dampening": 0.5},
        {"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
        {"momentum": 0.9, "maximize": True, "lr": 0.05},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adam", adam.Adam, lab_lr=0.01, fused=True,
    configs=(
        {}, {"lr": 0.01}, {"lr": _t(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "amsgrad": True}, {"betas": (0.8, 0.9), "eps": 1e-6},
        {"betas": (_t(0.8), _t(0.9))}, {"weight_decay": 0.1, "decoupled_weight_decay": True},
        {"amsgrad": True, "maximize": True, "lr": _t(0.02)},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adamw", adam.AdamW, lab_lr=0.01, fused=True,
    configs=(
        {}, {"lr": 0.01}, {"weight_decay": 0.1, "maximize": True}, {"weight_decay": 0.1, "amsgrad": True},
        {"lr": _t(0.01), "betas": (0.8, 0.95)},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adagrad", adagrad.Adagrad, lab_lr=0.1, sparse="yes", fused=True,
    configs=(
        {}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True}, {"lr": 0.1},
        {"initial_accumulator_value": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1}, {"lr": _t(0.01)}, {"eps": 1e-3},
    ),
))  # fmt: skip


# ---- helper-A optimizers (RMSprop, Adadelta, Adamax, NAdam, RAdam, ASGD, Rprop) go here

# ---- helper-B optimizers (SparseAdam, LBFGS, Adafactor, Muon) go here


def names() -> list[str]:
    """Registered optimizer names, in registry order."""
    return list(REGISTRY)


def get_spec(name: str) -> OptimizerSpec:
    """The spec of ``name`` (case-insensitive); a clear error lists the known names."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; known optimizers: {', '.join(REGISTRY)}") from None


def create_optimizer(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build a registered optimizer by name: ``create_optimizer("adamw", model.parameters(), lr=3e-4)``."""
    return get_spec(name).cls(params, **kwargs)

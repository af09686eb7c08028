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

from .optimizers import (
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    asgd,
    lbfgs,
    muon,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)

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


_register(OptimizerSpec(
    "rmsprop", rmsprop.RMSprop, lab_lr=0.01,
    configs=(
        {}, {"lr": 1e-3}, {"lr": _t(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"centered": True}, {"momentum": 0.9}, {"alpha": 0.9, "eps": 1e-6},
        {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "maximize": True},
        {"momentum": 0.5, "lr": _t(0.02), "centered": True},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adadelta", adadelta.Adadelta, lab_lr=1.0,
    configs=(
        {}, {"lr": 0.1}, {"lr": _t(0.5)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"rho": 0.95, "eps": 1e-4}, {"rho": 0.5, "weight_decay": 0.9, "lr": _t(0.1), "maximize": True},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adamax", adamax.Adamax, lab_lr=0.02,
    configs=(
        {}, {"lr": 0.1}, {"lr": _t(0.01)}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "maximize": True},
        {"betas": (0.8, 0.9), "eps": 1e-6}, {"betas": (0.5, 0.6), "eps": 0.5, "lr": _t(0.05)},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "nadam", nadam.NAdam, lab_lr=0.01,
    configs=(
        {}, {"lr": 1e-3}, {"lr": _t(0.01)}, {"momentum_decay": 6e-3}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "momentum_decay": 6e-3, "decoupled_weight_decay": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "lr": _t(0.01), "maximize": True},
        {"weight_decay": 0.1, "maximize": True}, {"betas": (0.8, 0.9), "eps": 1e-6, "momentum_decay": 0.5},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "radam", radam.RAdam, lab_lr=0.01,
    configs=(
        {}, {"lr": 2e-3}, {"lr": _t(0.01)}, {"eps": 1e-6}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True}, {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "lr": _t(0.02), "maximize": True},
        {"betas": (0.8, 0.9), "lr": 0.05},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "asgd", asgd.ASGD, lab_lr=0.01,
    configs=(
        {}, {"lr": 0.02}, {"lr": _t(0.01)}, {"lambd": 0.1}, {"t0": 2},
        {"alpha": 0.5, "lambd": 0.01, "lr": 0.05}, {"weight_decay": 0.1},
        {"weight_decay": 0.1, "maximize": True}, {"t0": 1, "lr": _t(0.02), "lambd": 0.5, "maximize": True},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "rprop", rprop.Rprop, lab_lr=0.01,
    configs=(
        {}, {"lr": 2e-4}, {"lr": _t(0.01)}, {"etas": (0.3, 1.5)}, {"step_sizes": (2e-6, 100)},
        {"step_sizes": (5e-3, 2e-2)}, {"maximize": True},
        {"lr": _t(0.05), "etas": (0.4, 1.1), "step_sizes": (1e-3, 0.1), "maximize": True},
    ),
))  # fmt: skip


_register(OptimizerSpec(
    "sparseadam", sparse_adam.SparseAdam, lab_lr=0.01, sparse="only", complex=False, elementwise=False,
    configs=(
        {}, {"lr": 0.01}, {"lr": _t(0.01)}, {"maximize": True}, {"betas": (0.8, 0.9), "eps": 1e-6},
        {"lr": 0.05, "betas": (0.5, 0.7), "maximize": True},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "lbfgs", lbfgs.LBFGS, lab_lr=1.0, closure=True, elementwise=False,
    configs=(
        {}, {"lr": 0.1}, {"lr": _t(0.5)}, {"line_search_fn": "strong_wolfe"},
        {"line_search_fn": "strong_wolfe", "history_size": 2, "max_iter": 6},
        {"line_search_fn": "strong_wolfe", "lr": _t(0.3), "max_eval": 7, "tolerance_change": 1e-4},
        {"history_size": 3, "max_iter": 7, "max_eval": 9, "lr": 0.5},
        {"tolerance_grad": 1e-3, "tolerance_change": 1e-4}, {"max_iter": 1},
        {"line_search_fn": "strong_wolfe", "max_iter": 1},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "adafactor", adafactor.Adafactor, lab_lr=0.05, complex=False, elementwise=False,
    configs=(
        {}, {"lr": 0.05}, {"lr": _t(0.01)}, {"weight_decay": 0.1, "lr": 0.01},
        {"weight_decay": 0.1, "maximize": True}, {"beta2_decay": -1.0}, {"beta2_decay": -0.5, "d": 1.5},
        {"eps": (1e-30, 1e-2)}, {"eps": (0.5, 0.0), "lr": 0.5}, {"d": 4.0, "lr": 1.0, "weight_decay": 0.01},
        {"foreach": False, "maximize": True},
    ),
))  # fmt: skip
_register(OptimizerSpec(
    "muon", muon.Muon, lab_lr=0.02, matrix_only=True, complex=False, elementwise=False,
    configs=(
        {}, {"lr": 0.02}, {"lr": _t(0.01)}, {"nesterov": False}, {"adjust_lr_fn": "original"},
        {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.01}, {"ns_steps": 3, "momentum": 0.8},
        {"weight_decay": 0.0, "nesterov": False, "momentum": 0.0},
        {"ns_coefficients": (3.4, -4.7, 2.0), "eps": 1e-3, "ns_steps": 6},
    ),
))  # fmt: skip


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

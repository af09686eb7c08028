"""The one registry of optimizers: name -> class, capabilities and configurations.

It drives the test tables (every config is checked against its oracle bit for bit),
``create_optimizer``, the CLI, the lab and the benchmarks. It restates nothing: each entry is
read from an optimizer class exported by :mod:`optimkit.optimizers` -- its rule's declared
capabilities, its ``configs`` and ``lab_lr``. Adding an optimizer is one module there and one
export line; it appears here by itself.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import optimizers
from .groups import NO_DECAY_TYPES, param_groups
from .optimizer import Oracle
from .rule import Capabilities

__all__ = ["OptimizerSpec", "REGISTRY", "get_spec", "create_optimizer", "names"]


class OptimizerSpec:
    """What the project knows about one optimizer, read from its class.

    Attributes:
        name: registry key (the class name in lower case, e.g. ``"adamw"``).
        cls: the optimizer class.
        configs: constructor keyword arguments that together exercise every option; the
            exactness table runs each against the oracle (the first one is the default).
        lab_lr: a learning rate that works on small problems (the lab's starting point).
        caps: the capabilities (:class:`optimkit.rule.Capabilities`); ``closure``,
            ``complex``, ``sparse``, ``matrix_only``, ``elementwise`` and ``fused`` (whether
            it accepts ``fused=True``) read them.

    Everything is the class's own declaration. A class that declares nothing (torch's own,
    or a third party's) can be described by passing ``configs``, ``lab_lr`` and
    capabilities as keywords: ``OptimizerSpec("t_lbfgs", torch.optim.LBFGS, closure=True)``.
    """

    def __init__(self, name: str, cls: type, *, configs: tuple[dict[str, Any], ...] | None = None,
                 lab_lr: float | None = None, **caps: Any) -> None:  # fmt: skip
        self.name, self.cls = name, cls
        self.configs = configs if configs is not None else getattr(cls, "configs", ({},))
        self.lab_lr = lab_lr if lab_lr is not None else getattr(cls, "lab_lr", 1e-3)
        declared = cls.caps() if isinstance(getattr(cls, "caps", None), Callable) else Capabilities()
        if isinstance(caps.get("fused"), bool):  # a kernel's name, or None
            caps["fused"] = name if caps["fused"] else None
        self.caps = dataclasses.replace(declared, **caps) if caps else declared

    def __repr__(self) -> str:
        return f"OptimizerSpec({self.name!r}, {self.cls.__qualname__})"

    @property
    def required(self) -> dict[str, Any]:
        """Constructor arguments without a default (SAM's ``base_optimizer``), valued from the
        first config: what building the optimizer takes besides ``params`` (empty for most)."""
        try:
            signature = inspect.signature(self.cls.__init__)
        except (TypeError, ValueError):
            return {}
        names = [
            p.name for p in list(signature.parameters.values())[2:]
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]  # fmt: skip
        return {name: self.configs[0][name] for name in names if name in self.configs[0]}

    @property
    def closure(self) -> bool:
        return self.caps.closure

    @property
    def complex(self) -> bool:
        return self.caps.complex

    @property
    def sparse(self) -> str:
        return self.caps.sparse

    @property
    def matrix_only(self) -> bool:
        return self.caps.matrix_only

    @property
    def fused(self) -> bool:
        return self.caps.fused is not None

    @property
    def elementwise(self) -> bool:
        return self.caps.elementwise

    @property
    def torch_cls(self) -> type | None:
        """The torch.optim class of the same name (None where this torch lacks it)."""
        return getattr(torch.optim, self.cls.__name__, None)

    @property
    def oracle(self) -> Oracle | None:
        """The declared reference implementation (None: torch's class of the same name)."""
        declared = getattr(self.cls, "oracle", None)
        return Oracle(declared) if isinstance(declared, str) else declared

    @property
    def oracle_cls(self) -> type | None:
        """The reference the test tables compare with: the class's declared ``oracle``
        (imported on first use), else :attr:`torch_cls`."""
        return self.torch_cls if self.oracle is None else self.oracle.load()

    def make_oracle(self, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The oracle built on ``params`` with ``kwargs`` (and what it needs to be this optimizer)."""
        if self.oracle is not None:
            return self.oracle.make(params, **kwargs)
        return self.oracle_cls(params, **kwargs)

    def exact(self, dtype: torch.dtype) -> bool:
        """Whether the oracle gives the same bits in ``dtype`` (torch's always do)."""
        return self.oracle is None or self.oracle.exact_for(dtype)

    @property
    def exact_everywhere(self) -> bool:
        return self.oracle is None or self.oracle.exact is True


REGISTRY: dict[str, OptimizerSpec] = {
    cls.__name__.lower(): OptimizerSpec(cls.__name__.lower(), cls)
    for cls in (getattr(optimizers, name) for name in optimizers.__all__)
}


def names() -> list[str]:
    """Registered optimizer names, in registry order."""
    return list(REGISTRY)


def get_spec(name: str) -> OptimizerSpec:
    """The spec of ``name`` (case-insensitive); a clear error lists the known names."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; known optimizers: {', '.join(REGISTRY)}") from None


def create_optimizer(
    name: str,
    model_or_params: torch.nn.Module | Iterable[Any],
    *,
    layer_decay: float | None = None,
    filter_bias_and_bn: bool = True,
    param_group_fn: Callable[[torch.nn.Module], Any] | None = None,
    lookahead: bool | dict[str, Any] = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build a registered optimizer by name, from parameters or from a model.

    ``create_optimizer("adamw", model.parameters(), lr=3e-4)`` passes the parameters as they
    are. Given a model, the groups come from :func:`optimkit.groups.param_groups` -- no weight
    decay for biases, norms and embeddings (``filter_bias_and_bn=False``: decay everything),
    layer-wise lr decay with ``layer_decay``, parameter names kept -- or from
    ``param_group_fn(model)``: ``create_optimizer("adamw", model, lr=3e-4, weight_decay=0.05,
    layer_decay=0.75)``. The keywords are timm's ``create_optimizer_v2``'s where they overlap;
    the others go to the optimizer. A class that needs more from the model's groups declares
    it (``MuonWithAuxAdam.model_groups``: ``use_muon`` for the hidden weight matrices).

    ``lookahead=True`` (or ``{"k": 5, "alpha": 0.5}``, or a name ``"lookahead_adamw"`` as
    timm spells it) wraps the optimizer in :class:`~optimkit.optimizers.lookahead.Lookahead`.
    """
    if name.lower().startswith("lookahead_"):
        name, lookahead = name[len("lookahead_") :], lookahead or True
    if lookahead:
        from .optimizers.lookahead import Lookahead

        inner = create_optimizer(
            name, model_or_params, layer_decay=layer_decay, filter_bias_and_bn=filter_bias_and_bn,
            param_group_fn=param_group_fn, **kwargs,
        )  # fmt: skip
        return Lookahead(inner, **(lookahead if isinstance(lookahead, dict) else {}))
    spec = get_spec(name)
    cls = spec.cls
    # Arguments the constructor requires and kwargs lack come from the spec's first config
    # (OptimizerSpec.required: create_optimizer("sam", params) wraps optimkit's SGD).
    kwargs = {**spec.required, **kwargs}
    if not isinstance(model_or_params, torch.nn.Module):
        if layer_decay is not None or param_group_fn is not None:
            raise TypeError("create_optimizer: layer_decay and param_group_fn need a model, not parameters")
        return cls(model_or_params, **kwargs)
    model = model_or_params
    if param_group_fn is not None:
        return cls(param_group_fn(model), **kwargs)
    signature = inspect.signature(cls.__init__).parameters
    options = dict(getattr(cls, "model_groups", {}))
    if options:  # weight decay is per group there (each kind has its own default)
        weight_decay = kwargs.pop("weight_decay", None)
        groups = param_groups(
            model, lr=kwargs.get("lr") if layer_decay is not None else None,
            weight_decay=1.0 if weight_decay is None else weight_decay, layer_decay=layer_decay,
            exclude_1d=filter_bias_and_bn, no_decay_types=NO_DECAY_TYPES if filter_bias_and_bn else (),
            **options,
        )  # fmt: skip
        if weight_decay is None:  # where it applies, the kind's own default
            for group in groups:
                if group["weight_decay"]:
                    del group["weight_decay"]
        return cls(groups, **kwargs)
    decays = "weight_decay" in signature  # Rprop, LBFGS, ... have no weight decay to group by
    if layer_decay is None and not (decays and filter_bias_and_bn):
        return cls(model.named_parameters(), **kwargs)
    groups = param_groups(
        model, lr=kwargs.get("lr") if layer_decay is not None else None,
        weight_decay=kwargs.get("weight_decay", signature["weight_decay"].default) if decays else 0.0,
        layer_decay=layer_decay, exclude_1d=filter_bias_and_bn,
        no_decay_types=NO_DECAY_TYPES if filter_bias_and_bn else (),
    )  # fmt: skip
    if not decays:
        for group in groups:
            del group["weight_decay"]
    return cls(groups, **kwargs)

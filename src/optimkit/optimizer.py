"""The optimizer system: parameter groups, lazily created state, hooks, state dicts.

This is optimkit's own implementation of the machinery that ``torch.optim.Optimizer``
provides. The class *derives* from ``torch.optim.Optimizer`` only so that
``isinstance(opt, torch.optim.Optimizer)`` holds -- torch's LR schedulers, ``GradScaler``,
``ZeroRedundancyOptimizer`` and distributed checkpointing check exactly that. Every method
torch's base class defines is defined again here; none of torch's base-class code runs
(``tests/test_optimizer_core.py`` checks this).

An optimizer subclass declares one thing, its update rule (:mod:`optimkit.rule`), and writes
its torch-style constructor (signature, defaults, validation)::

    class Adam(Optimizer):
        rule = adam_          # the math, its state, its capabilities: @rule(...) def adam_(...)
        def __init__(self, params, lr=1e-3, ...):
            super().__init__(params, dict(lr=lr, ...), compile=compile)

The step driver here does the rest: for each group it collects the parameters with gradients,
builds a :class:`~optimkit.execution.Job` and lets the executor that
:func:`~optimkit.execution.pick` chooses run it -- per tensor, packed, fused, compiled or
sharded; the rule does not know which. State is created from the rule's declaration and lives
in a :class:`~optimkit.execution.StateStore` (``opt.state`` is its dict, in torch's format).

Optimizers whose step is not "one rule per tensor" (LBFGS) override ``step`` itself and
declare their ``capabilities`` directly.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import torch
import torch.optim.optimizer as _torch_optimizer
from torch.utils.hooks import RemovableHandle

from .execution import Compiled, Job, StateStore, encoded, pick
from .execution import sharded as dtensor
from .execution.fused import group_by_device_and_dtype
from .rule import Capabilities, Rule, step_tensor

__all__ = [
    "Optimizer",
    "Oracle",
    "LoadReport",
    "required",
    "register_optimizer_step_pre_hook",
    "register_optimizer_step_post_hook",
]

# The "required" sentinel and the global step hooks are *shared* with torch.optim: a hook a
# framework registers globally fires for optimkit optimizers too, and custom optimizers may
# use either library's sentinel in their defaults.
required = _torch_optimizer.required
_global_pre_hooks = _torch_optimizer._global_optimizer_pre_hooks
_global_post_hooks = _torch_optimizer._global_optimizer_post_hooks

StateDict = dict[str, Any]


class LoadReport(NamedTuple):
    """What ``load_state_dict`` could not match by name (as ``Module.load_state_dict``'s)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def _all_named(groups: list[dict[str, Any]]) -> bool:
    return bool(groups) and all(
        isinstance(g, dict) and "param_names" in g and len(g["param_names"]) == len(g.get("params", ())) for g in groups
    )


def _names_to(groups: list[dict[str, Any]], items: Callable, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in groups:
        for name, item in zip(g["param_names"], items(g)):
            if name in out:
                raise ValueError(f"parameter name {name!r} appears twice in {where}: names must be unique")
            out[name] = item
    return out


@dataclass(frozen=True)
class Oracle:
    """The reference implementation an optimizer is checked against (the authors' package,
    pinned in the ``test`` extra; :attr:`Optimizer.oracle`).

    Attributes:
        target: ``"module:Class"``, imported on first use.
        kwargs: what the oracle's constructor needs to *be* this optimizer
            (bitsandbytes' ``AdEMAMix`` takes ``optim_bits=32``).
        exact: where the test tables demand the same bits: True (every dtype), False, or the
            dtypes that are. Elsewhere ``tests/test_oracles.py`` holds the oracle to 1e-9
            (float64) / 1e-5 (float32) relative after every step.
        note: why it is not bit for bit where it is not (the README's agreement column).
        tolerance: ``tests/test_oracles.py``'s relative tolerance for a dtype where the
            oracle itself computes in less precision (bitsandbytes computes float64
            parameters in float32: ``{torch.float64: 1e-5}``); say why in ``note``.
        setup: methods called on the oracle once it is made, before its first step
            (schedulefree's optimizers start in eval mode and refuse to step: ``("train",)``).
    """

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    exact: bool | tuple[torch.dtype, ...] = True
    note: str = ""
    tolerance: dict[torch.dtype, float] = field(default_factory=dict)
    setup: tuple[str, ...] = ()

    def load(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def exact_for(self, dtype: torch.dtype) -> bool:
        return self.exact if isinstance(self.exact, bool) else dtype in self.exact

    def make(self, params: Any, **kwargs: Any) -> Any:
        """The oracle on ``params`` with ``kwargs``, its own :attr:`kwargs` and :attr:`setup` done."""
        opt = self.load()(params, **kwargs, **self.kwargs)
        for method in self.setup:
            getattr(opt, method)()
        return opt


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None | (args, kwargs)`` for every optimizer."""
    handle = RemovableHandle(_global_pre_hooks)
    _global_pre_hooks[handle.id] = hook
    return handle


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Register ``hook(optimizer, args, kwargs) -> None`` for every optimizer."""
    handle = RemovableHandle(_global_post_hooks)
    _global_post_hooks[handle.id] = hook
    return handle


def _hooked_step(step: Callable) -> Callable:
    """Wrap a ``step`` implementation: hooks, grad mode and ``_step_count``."""

    @functools.wraps(step)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        for pre_hook in chain(_global_pre_hooks.values(), self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{step} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                    )
        with torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step"):
            # No autograd graph through the update unless the user asked for one.
            with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
                out = step(self, *args, **kwargs)
        self._step_count += 1
        self._optimizer_step_code()
        for post_hook in chain(self._optimizer_step_post_hooks.values(), _global_post_hooks.values()):
            post_hook(self, args, kwargs)
        return out

    wrapper.hooked = True  # torch marks its patched step the same way
    return wrapper


def _register_hook(hooks: OrderedDict, hook: Callable, prepend: bool = False) -> RemovableHandle:
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


class Optimizer(torch.optim.Optimizer):
    r"""Base class of all optimkit optimizers (and a drop-in base for your own).

    Args:
        params: an iterable of tensors, of ``(name, tensor)`` pairs (``named_parameters()``),
            or of dicts defining parameter groups.
        defaults: default hyperparameters for groups that do not set them.

    Attributes:
        defaults: the defaults passed to the constructor.
        state: ``defaultdict(dict)`` keyed by the parameter tensor itself; created lazily at
            a parameter's first step with a gradient.
        param_groups: list of dicts; ``group["params"]`` holds the very tensors passed in.
        _step_count: number of completed ``step()`` calls.
    """

    #: The update rule (math, state, capabilities); None for a step written whole (LBFGS).
    rule: Rule | None = None
    #: What an optimizer without a rule supports (one with a rule declares it there).
    capabilities: Capabilities = Capabilities()
    #: Constructor arguments that together exercise every option: the registry's test tables
    #: run each against the oracle (the first one is the default).
    configs: tuple[dict[str, Any], ...] = ({},)
    #: A learning rate that works on the lab's small problems (its search starts here).
    lab_lr: float = 1e-3
    #: The reference implementation the test tables compare with: ``"module:Class"`` (the
    #: authors' package, pinned in the ``test`` extra, bit for bit) or an :class:`Oracle`
    #: saying more; None: torch.optim's class of this name.
    oracle: str | Oracle | None = None
    #: How torch words the capturable-on-unsupported-device error, and whether XLA counts.
    _capturable_tensors: str = "params and state_steps"
    _capturable_xla: bool = True
    #: torch's message for a sparse gradient the rule cannot take (default: "<Name> does not
    #: support sparse gradients").
    _sparse_error: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "hooked", False):
            cls.step = _hooked_step(step)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "encodes", False):
            cls.__init__ = _encoding_keywords(init)

    def _set_encoding(self, **options: Any) -> None:
        """Give every group (and ``defaults``) the state-encoding options not None/False
        (``state_encoding``, ``block_size``, ``bf16_stochastic_round``, ``kahan_summation``;
        see :mod:`optimkit.execution.encoded`), after checking all of them: on error nothing
        changes. A group that set an option itself keeps its own."""
        options = {k: v for k, v in options.items() if v is not None and v is not False}
        if not options:
            return
        if self.compile:
            raise ValueError(
                "compile=True cannot be combined with a state encoding or bf16 rounding options: "
                "encoded state runs through optimkit's own kernels"
            )
        for group in self.param_groups:
            merged = {**group, **{k: v for k, v in options.items() if k not in group}}
            encoded.check_encoding(self._rule_for(merged), merged, type(self).__name__)
        self.defaults.update(options)
        for group in self.param_groups:
            for k, v in options.items():
                group.setdefault(k, v)

    def __init__(self, params: Any, defaults: dict[str, Any], *, compile: bool = False) -> None:
        # torch's base __init__ is deliberately not called: this class is the implementation.
        torch._C._log_api_usage_once("python.optimizer")
        _check_compile(type(self), compile, defaults)
        self._store = StateStore()
        self._compiled = Compiled() if compile else None
        self.defaults = defaults
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._step_count = 0
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"

        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be "
                "an iterable of Tensors or dicts, but got " + torch.typename(params)
            )
        self.param_groups: list[dict[str, Any]] = []

        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)
        self._warned_capturable_if_run_uncaptured = True

    # ------------------------------------------------------------------ pickling, repr
    def __getstate__(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            "state": self.state,
            "param_groups": self.param_groups,
            "_step_count": self._step_count,
            **({"compile": True} if self.compile else {}),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        compile = bool(state.pop("compile", False) or state.pop("_compile", False))
        self._store = StateStore()
        self._compiled = Compiled() if compile else None
        self.state = state.pop("state", defaultdict(dict))
        self.__dict__.update(state)
        self._restore_bookkeeping()
        self.defaults.setdefault("differentiable", False)

    def _restore_bookkeeping(self) -> None:
        """Hook tables, step count and profiler name an unpickled optimizer lacks (wrappers,
        which pickle their own way, call this too)."""
        for name in (
            "_optimizer_step_pre_hooks",
            "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks",
            "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks",
            "_optimizer_load_state_dict_post_hooks",
        ):
            self.__dict__.setdefault(name, OrderedDict())
        self.__dict__.setdefault("_step_count", 0)
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"

    # ------------------------------------------------------------------ state and capabilities
    @property
    def state(self) -> defaultdict[torch.Tensor, Any]:
        """Per-parameter state, torch's ``defaultdict(dict)`` keyed by the parameter (see
        :mod:`optimkit.execution.store`: packed entries are views of flat buffers)."""
        return self._store.state

    @state.setter
    def state(self, value: Any) -> None:
        self._store.replace(value)

    @property
    def compile(self) -> bool:
        """Whether elementwise steps run the rule under torch.compile (``compile=True``)."""
        return self._compiled is not None

    @property
    def compile_seconds(self) -> float:
        """Time spent in steps that compiled a graph (0 unless ``compile=True``)."""
        return self._compiled.seconds if self._compiled is not None else 0.0

    @classmethod
    def caps(cls) -> Capabilities:
        """The optimizer's capabilities: its rule's, or its own declaration."""
        return cls.rule.caps if cls.rule is not None else cls.capabilities

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # GradScaler lets a fused step unscale gradients itself (grad_scale / found_inf).
        return self.caps().fused is not None and any(group.get("fused") for group in self.param_groups)

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {key}: {group[key]}" for key in sorted(group) if key != "params")
        return "\n".join(lines) + "\n)"

    # ------------------------------------------------------------------ torch hooks API
    def _accelerator_graph_capture_health_check(self) -> None:
        """optimkit steps read the step count on the host; they cannot be graph-captured."""
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"Attempting CUDA graph capture of step() for an instance of {type(self).__name__}, "
                "which optimkit does not support (its step reads the step count on the host)."
            )

    _cuda_graph_capture_health_check = _accelerator_graph_capture_health_check

    def _optimizer_step_code(self) -> None:
        """Called after every step; ``torch.profiler`` hooks into it to inspect state."""

    @staticmethod
    def profile_hook_step(func: Callable) -> Callable:
        """Wrap a step function with optimkit's hook and profiling machinery."""
        return _hooked_step(func)

    def _patch_step_function(self) -> None:
        """Steps are wrapped once per class, in ``__init_subclass__``; nothing to patch."""

    @staticmethod
    def _group_tensors_by_device_and_dtype(tensorlistlist: list, with_indices: bool = False) -> dict:
        """Group parallel tensor lists by (device, dtype) -- for optimizers written in torch's style."""
        return group_by_device_and_dtype(tensorlistlist)

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """Register ``hook(optimizer, args, kwargs) -> None | (args, kwargs)`` before ``step``."""
        return _register_hook(self._optimizer_step_pre_hooks, hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """Register ``hook(optimizer, args, kwargs) -> None`` after ``step``."""
        return _register_hook(self._optimizer_step_post_hooks, hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Register ``hook(optimizer) -> None``, called before ``state_dict``."""
        return _register_hook(self._optimizer_state_dict_pre_hooks, hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Register ``hook(optimizer, state_dict) -> state_dict | None``, called after ``state_dict``."""
        return _register_hook(self._optimizer_state_dict_post_hooks, hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Register ``hook(optimizer, state_dict) -> state_dict | None``, called before loading."""
        return _register_hook(self._optimizer_load_state_dict_pre_hooks, hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Register ``hook(optimizer) -> None``, called after loading."""
        return _register_hook(self._optimizer_load_state_dict_post_hooks, hook, prepend)

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; hyperparameters it does not set come from ``defaults``.

        The group is validated completely before anything changes: on error neither the
        optimizer nor the dict passed in is modified.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)

        names = [p[0] for p in params if isinstance(p, tuple)]
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        group["params"] = tensors
        if names:
            if len(names) != len(tensors):
                raise ValueError(
                    "all optimizer params should be with/without names. Some param names are missing"
                )
            group["param_names"] = names

        for param in tensors:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is " + torch.typename(param)
                )
            if not self.defaults.get("differentiable", None) and not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {name}"
                )
            group.setdefault(name, default)

        if len(tensors) != len(set(tensors)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error; "
                "see github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )

        seen: set[torch.Tensor] = set()
        for existing in self.param_groups:
            seen.update(existing["params"])
            if ("param_names" in group) != ("param_names" in existing):
                which = "with names" if "param_names" in group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {which} to the optimizer"
                )
        if not seen.isdisjoint(tensors):
            raise ValueError("some parameters appear in more than one parameter group")
        if any(k in group for k in encoded.ENCODING_KEYS):
            encoded.check_encoding(self._rule_for(group), group, type(self).__name__)

        # Validated: commit into the caller's dict, so ``param_groups[i] is param_group``.
        param_group.clear()
        param_group.update(group)
        self.param_groups.append(param_group)

    # ------------------------------------------------------------------ gradients
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all optimized tensors (to ``None`` by default)."""
        with torch.autograd.profiler.record_function(self._zero_grad_profile_name):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                    else:
                        if p.grad.grad_fn is not None:
                            p.grad.detach_()
                        else:
                            p.grad.requires_grad_(False)
                        p.grad.zero_()

    # ------------------------------------------------------------------ the step driver
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The group's parameters that have a gradient (a None grad skips the parameter
        entirely: no state, no step count), checked before anything is updated."""
        params = group["params"]
        grads = [p.grad for p in params]
        if any(g is None for g in grads):
            params = [p for p, g in zip(params, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        if self.caps().sparse == "no" and any(g.is_sparse for g in grads):
            raise RuntimeError(self._sparse_error or f"{type(self).__name__} does not support sparse gradients")
        return list(params), grads

    def _step_group(self, group: dict[str, Any]) -> None:
        """Run the rule on every parameter of the group that has a gradient, through the
        executor :func:`optimkit.execution.pick` chooses for it."""
        if self.rule is None:
            raise NotImplementedError(
                f"{type(self).__name__} declares no update rule: set the class attribute `rule` "
                "(see optimkit.rule) or override step()"
            )
        params, grads = self._params_with_grad(group)
        if not params:
            return
        self._step_params(group, params, grads)

    def _step_params(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor], packed: bool = True
    ) -> None:
        """Step ``params`` of ``group`` (each with a gradient, in ``grads``) through the executor
        :func:`optimkit.execution.pick` chooses; ``packed=False`` (a step of one parameter, see
        :mod:`optimkit.in_backward`) never packs."""
        rule = self._rule_for(group)
        if not (group.get("fused") and rule.caps.fused is not None):
            self._check_group(group, params)
        job = Job(
            rule=rule, group=group, params=params, grads=grads, hyper=self._hyper(group),
            store=self._store, grad_scale=getattr(self, "grad_scale", None),
            found_inf=getattr(self, "found_inf", None),
        )  # fmt: skip
        pick(job, self._compiled, packed).step(job)

    def _check_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Raise before any update if the group cannot be stepped (capturable on CPU, ...)."""
        if group.get("capturable"):
            devices = _torch_optimizer._get_capturable_supported_devices(self._capturable_xla)
            for p in params:
                if p.device.type not in devices:
                    raise AssertionError(
                        f"If capturable=True, {self._capturable_tensors} must be on supported devices: {devices}."
                    )

    def _rule_for(self, group: dict[str, Any]) -> Rule:
        """The rule that steps ``group``: the class's, or a variant of it that a group option
        calls for (``cautious=True`` makes Adam's step need whole tensors: ``Rule.variant``)."""
        return self.rule

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        """The rule's keyword arguments from the group (its keys, by the rule's argument names)."""
        return self._rule_for(group).hyperparameters(group)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> StateDict:
        """The optimizer state in torch's format.

        ``{"state": {param_id: {...}}, "param_groups": [{..., "params": [ids]}]}`` where
        parameter ids number the parameters of all groups in order. Tensors are not copied
        (as in torch) except entries that live in a pack's flat buffer, which are given as
        tensors of their own; use ``copy.deepcopy`` or ``torch.save`` for a snapshot.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        param_ids: dict[int, int] = {}
        start = 0
        param_groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            # As torch: ids new to this group are numbered together, so a parameter listed
            # twice in one group gets the id of its last occurrence.
            param_ids.update(
                {id(p): i for i, p in enumerate(group["params"], start) if id(p) not in param_ids}
            )
            packed["params"] = [param_ids[id(p)] for p in group["params"]]
            start += len(packed["params"])
            param_groups.append(packed)
        # Packed entries are views of flat buffers: each is given as a tensor of its own, so
        # a saved state dict holds what torch's would (see optimkit.execution.store).
        standalone = self._store.standalone
        packed_state = {
            (param_ids[id(k)] if isinstance(k, torch.Tensor) else k): standalone(v)
            for k, v in self.state.items()
        }
        state_dict = {"state": packed_state, "param_groups": param_groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: StateDict, strict: bool = True) -> LoadReport:
        """Load a state dict saved by optimkit or torch.optim.

        Everything is validated before anything changes: a dict that does not fit this
        optimizer raises ``ValueError`` naming the problem and leaves the optimizer exactly
        as it was. Tensors are copied to each parameter's device; floating state is cast to
        the parameter's dtype except the rule's scalar state (``step``, ``mu_product``, ...),
        which keep their saved dtype so that training resumes bit-identically.

        **By name or by position.** When this optimizer and the saved dict both have parameter
        names (built from ``model.named_parameters()``: each group's ``param_names``), state is
        matched by name, so added, removed and reordered parameters cannot receive another's
        moments. Like ``Module.load_state_dict``: names only one side has and state whose shape
        no longer fits are reported; ``strict=True`` raises on any of them (changing nothing),
        ``strict=False`` loads the rest and leaves the others fresh. Group hyperparameters are
        loaded group by group when the number of groups is unchanged. Without names on both
        sides the match is by position, as torch's.

        Returns:
            :class:`LoadReport`: ``missing`` and ``unexpected`` names and ``mismatched``
            ``(name, saved shape, parameter shape)`` (all empty for a positional load).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, but got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        missing = [k for k in ("state", "param_groups") if k not in state_dict]
        if missing:
            raise ValueError(f"loaded state dict is missing the key(s) {missing}")

        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if _all_named(groups) and _all_named(saved_groups):
            return self._load_by_name(state_dict, saved_groups, strict)
        if len(groups) != len(saved_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups"
                f" ({len(saved_groups)} saved, {len(groups)} in the optimizer)"
            )
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            if not isinstance(sg, dict) or "params" not in sg:
                raise ValueError(f"loaded state dict's param group {i} has no 'params' list")
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group "
                    "that doesn't match the size of optimizer's group"
                    f" (group {i}: {len(sg['params'])} saved, {len(g['params'])} in the optimizer)"
                )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
            )
        )
        group_of = {pid: sg for sg in saved_groups for pid in sg["params"]}

        state: defaultdict[Any, Any] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(
                    f"loaded state dict has state for parameter id {key!r}, which is not in any of its param groups"
                )
            param = id_map[key]
            if not isinstance(value, dict):
                raise ValueError(f"state of parameter id {key!r} must be a dict, got {type(value).__name__}")
            self._check_loaded_state(key, param, value)
            state[param] = self._cast_state(param, value, group_of[key])

        new_groups = []
        for g, sg in zip(groups, saved_groups):
            sg["params"] = g["params"]
            if "param_names" in g and "param_names" not in sg:
                sg["param_names"] = g["param_names"]
            for k, v in g.items():  # keys an older or foreign dict lacks keep their values
                sg.setdefault(k, v)
            encoded.keep_own_encoding(sg, g)
            new_groups.append(sg)
        for sg in new_groups:
            self._normalize_group(sg)
        self._conform_loaded(state, new_groups)

        # Everything is valid: commit (the store drops the layouts of the old state).
        self.state = state
        self.param_groups = new_groups
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
        return LoadReport([], [], [])

    def _load_by_name(self, state_dict: StateDict, saved_groups: list[dict[str, Any]], strict: bool) -> LoadReport:
        """``load_state_dict`` matching parameters by name (see there)."""
        groups = self.param_groups
        ours = _names_to(groups, lambda g: g["params"], "this optimizer")
        saved = _names_to(saved_groups, lambda g: g["params"], "the loaded state dict")
        group_of = {pid: sg for sg in saved_groups for pid in sg["params"]}
        saved_state = state_dict["state"]
        missing = [n for n in ours if n not in saved]
        unexpected = [n for n in saved if n not in ours]
        mismatched = []
        for name in (n for n in ours if n in saved):
            value, param = saved_state.get(saved[name]), ours[name]
            if not isinstance(value, dict):
                continue
            for key in self.rule.param_keys if self.rule is not None else ():
                t = value.get(key)
                if key + encoded.SCALE in value:
                    if t.numel() not in (param.numel(), -(-param.numel() // 2)):
                        mismatched.append((name, tuple(t.shape), tuple(param.shape)))
                        break
                    continue
                if isinstance(t, torch.Tensor) and t.shape != param.shape:
                    mismatched.append((name, tuple(t.shape), tuple(param.shape)))
                    break
        same_groups = len(groups) == len(saved_groups)
        problems = []
        if missing:
            problems.append(f"parameters without saved state (missing): {', '.join(missing)}")
        if unexpected:
            problems.append(f"saved parameters not in this optimizer (unexpected): {', '.join(unexpected)}")
        for name, a, b in mismatched:
            problems.append(f"{name}: saved state has shape {a}, the parameter has shape {b}")
        if not same_groups:
            problems.append(f"{len(saved_groups)} saved parameter groups, {len(groups)} in the optimizer")
        if strict and problems:
            raise ValueError(
                "loaded state dict does not match this optimizer by parameter name (strict=True; "
                "strict=False loads what matches):\n  " + "\n  ".join(problems)
            )
        skip = {n for n, _, _ in mismatched}
        state: defaultdict[Any, Any] = defaultdict(dict)
        for name, param in ours.items():
            if name not in saved or name in skip or saved[name] not in saved_state:
                continue
            value = saved_state[saved[name]]
            if not isinstance(value, dict):
                raise ValueError(f"state of parameter {name!r} must be a dict, got {type(value).__name__}")
            state[param] = self._cast_state(param, value, group_of[saved[name]])
        new_groups = []
        for i, g in enumerate(groups):
            sg = saved_groups[i] if same_groups else {}
            new = {k: v for k, v in sg.items() if k not in ("params", "param_names")}
            new["params"], new["param_names"] = g["params"], g["param_names"]
            for k, v in g.items():
                new.setdefault(k, v)
            encoded.keep_own_encoding(new, g)
            new_groups.append({k: new[k] for k in [*g, *(k for k in new if k not in g)]})
        for sg in new_groups:
            self._normalize_group(sg)
        self._conform_loaded(state, new_groups)
        self.state = state
        self.param_groups = new_groups
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
        return LoadReport(missing, unexpected, mismatched)

    def _conform_loaded(self, state: dict[Any, Any], groups: list[dict[str, Any]]) -> None:
        """Bring loaded moments into each group's state encoding (a float32 state dict loaded
        by an 8-bit optimizer, or the reverse), warning what was converted."""
        changes: dict[str, list[str]] = {}
        for gi, group in enumerate(groups):
            rule = self._rule_for(group)
            if rule is None or not rule.encodable:
                continue
            names = group.get("param_names") or [f"group {gi} parameter {i}" for i in range(len(group["params"]))]
            for name, p in zip(names, group["params"]):
                if p in state:
                    done = encoded.conform(rule, p, state[p], group)
                    if done:
                        changes[name] = done
        encoded.warn_conversions(changes, type(self).__name__)

    def _normalize_group(self, group: dict[str, Any]) -> None:
        """Adjust a loaded group (flags a subclass forces, e.g. AdamW's decoupled decay)."""

    def _check_loaded_state(self, key: Any, param: torch.Tensor, value: dict[str, Any]) -> None:
        for name in self.rule.param_keys if self.rule is not None else ():
            t = value.get(name)
            if name + encoded.SCALE in value:  # encoded: its codes' shape is the encoding's
                continue
            if isinstance(t, torch.Tensor) and t.shape != param.shape:
                raise ValueError(
                    f"loaded state dict's {name!r} for parameter id {key!r} has shape {tuple(t.shape)}, "
                    f"but the parameter has shape {tuple(param.shape)}"
                )

    def _cast_state(self, param: torch.Tensor, value: Any, group: dict[str, Any], key: Any = None) -> Any:
        """Deep-copy ``value``, moving tensors to ``param``'s device and dtype (see load_state_dict).

        The rule's scalar state (``step``, NAdam's ``mu_product``, ASGD's ``eta``...) keeps its
        saved dtype and lands where a fresh one would be made, so a resumed run continues
        bit-identically (torch casts ``mu_product`` to a float64 parameter's dtype); one saved
        as a plain number (old state dicts) becomes the tensor a fresh one would be.
        """
        slot = self.rule.state.get(key) if self.rule is not None and isinstance(key, str) else None
        if slot is not None and slot.kind == "scalar" and slot.init is not None:
            fresh = slot.init(param, group)
            if isinstance(value, torch.Tensor):
                if key == "step" and (group.get("fused") or group.get("capturable")):
                    return value.to(dtype=torch.float32, device=param.device, copy=True)
                device = fresh.device if isinstance(fresh, torch.Tensor) else param.device
                return value.to(device=device, copy=True)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if isinstance(fresh, torch.Tensor):
                    return torch.tensor(float(value), dtype=fresh.dtype, device=fresh.device)
                return value
        if isinstance(value, torch.Tensor) and key == "step":  # a step without a rule: torch's policy
            if group.get("fused") or group.get("capturable"):
                return value.to(dtype=torch.float32, device=param.device, copy=True)
            return value.to(device="cpu", copy=True)
        if isinstance(value, torch.Tensor):
            same_kind = (value.is_floating_point() and param.is_floating_point()) or (
                value.is_complex() and param.is_complex()
            )
            dtype = param.dtype if same_kind else value.dtype
            value = value.to(dtype=dtype, device=param.device, copy=True)
            if self.rule is not None and key not in self.rule.param_keys:
                # Not param-shaped state, even where the shapes agree (SOAP's statistic of a
                # square matrix, a tensor in a list: key None): replicated, never sharded.
                return value
            # A full (unsharded) state loaded for a sharded parameter: keep this rank's shard.
            return dtensor.localize_loaded(value, param)
        if isinstance(value, dict):
            kept = encoded.stored_as_saved(value, param, group, self.rule)
            return {
                k: v.to(device=param.device, copy=True) if k in kept else self._cast_state(param, v, group, key=k)
                for k, v in value.items()
            }
        if key == "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return step_tensor(param, group, float(value))
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast_state(param, v, group) for v in value)
        return value

    @staticmethod
    def _process_value_according_to_param_policy(
        param: torch.Tensor, value: torch.Tensor, param_id: int, param_groups: list[dict], key: Any = None
    ) -> torch.Tensor:
        """torch's per-value load policy, for code that calls it directly: a ``step`` keeps
        its dtype (float32 on the parameter's device if fused/capturable); other floating
        values take the parameter's dtype and device."""
        group = next((g for g in param_groups if param_id in g["params"]), {})
        if key == "step":
            if group.get("fused") or group.get("capturable"):
                return value.to(dtype=torch.float32, device=param.device)
            return value
        if param.is_floating_point():
            return value.to(dtype=param.dtype, device=param.device)
        return value.to(device=param.device)


def _encoding_keywords(init: Callable) -> Callable:
    """``init`` taking the state-encoding keywords too, where it does not itself: every
    optimizer with an elementwise rule gets ``state_encoding=``, ``block_size=``,
    ``bf16_stochastic_round=`` and ``kahan_summation=`` without restating them (see
    :mod:`optimkit.execution.encoded`)."""
    own = set(inspect.signature(init).parameters)
    extra = [k for k in encoded.ENCODING_KEYS if k not in own]

    @functools.wraps(init)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in extra if k in kwargs}
        init(self, *args, **kwargs)
        if options:
            self._set_encoding(**options)

    wrapper.encodes = True  # type: ignore[attr-defined]
    return wrapper


def _check_compile(cls: type, compile: bool, defaults: dict[str, Any]) -> None:
    """Validate ``compile=True`` (see :mod:`optimkit.execution.compiled`) against the rule and
    the other flags."""
    if not compile:
        return
    rule = cls.rule
    if rule is None or not rule.caps.elementwise:
        raise ValueError(
            f"compile=True needs an elementwise update rule; {cls.__name__}'s step works on whole tensors"
        )
    if defaults.get("fused"):
        raise ValueError(
            "compile=True and fused=True cannot be used together: choose torch's fused kernel "
            "(fused=True) or the compiled update rule (compile=True)"
        )
    if defaults.get("differentiable"):
        raise ValueError(
            "compile=True does not support differentiable=True: differentiate through the exact "
            "path (compile=False)"
        )


Optimizer.step = _hooked_step(Optimizer.step)

"""Lookahead: k steps forward, one step back (Zhang et al. 2019), around any optimizer.

A wrapper, not a registry entry: it takes an optimizer *instance* (optimkit's or torch's),
which the registry's ``cls(params, **config)`` cannot build; ``tests/test_wrappers.py`` is its
table (exactness against the authors'-package oracle, resume, checkpoints).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..execution import StateStore
from ..optimizer import Optimizer

__all__ = ["Lookahead"]

_PULLBACK = ("none", "reset", "pullback")


def _by_device_and_dtype(*lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Parallel lists split by the first list's (device, dtype), in first-seen order."""
    groups: dict[tuple[Any, Any], tuple[list[Tensor], ...]] = {}
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype)
        out = groups.setdefault(key, tuple([] for _ in lists))
        for bucket, t in zip(out, items):
            bucket.append(t)
    return list(groups.values())


class Lookahead(Optimizer):
    r"""Lookahead: Zhang, Lucas, Hinton and Ba, *Lookahead Optimizer: k steps forward, 1 step
    back* (NeurIPS 2019). Checked bit for bit against ``pytorch_optimizer.Lookahead`` 4.1.0.

    The inner optimizer moves the fast weights :math:`\theta`; every :math:`k` of its steps the
    slow weights :math:`\phi` move toward them and the fast weights restart from there:

    .. math::
        \phi &\leftarrow \phi + \alpha (\theta - \phi) \qquad
            (\text{as } \theta.\mathrm{lerp}(\phi, 1 - \alpha)) \\
        \theta &\leftarrow \phi

    Args:
        optimizer: the inner optimizer -- an instance (optimkit's, torch's or any
            ``torch.optim.Optimizer``), or a class built here as ``optimizer(params, **kwargs)``
            with ``params`` passed as a keyword.
        k (int): inner steps per slow update (default: 5).
        alpha (float): :math:`\alpha` in [0, 1) (default: 0.5).
        pullback_momentum (str): what happens to the inner optimizer's ``momentum_buffer`` at
            a slow update: ``"none"`` (kept), ``"reset"`` (zeroed), ``"pullback"`` (interpolated
            like the weights, toward a slow momentum kept here as ``slow_momentum``).
        **kwargs: with an optimizer class: ``params`` and its arguments.

    ``param_groups`` *are* the inner optimizer's (LR schedulers drive it through the wrapper);
    each group counts its steps since the last slow update in ``group["counter"]``. ``state``
    is the wrapper's own: ``slow_params`` (and ``slow_momentum``) per parameter, made when the
    parameter joins. ``state_dict()`` is the oracle's format, ``{"lookahead_state": {(group,
    index): {...}}, "base_optimizer": <the inner optimizer's state dict>}`` -- complete (the
    counters are in the inner groups), so a run resumes bit for bit, checkpoints move between
    this class and ``pytorch_optimizer.Lookahead``, and ``optimkit.Checkpointer`` saves it.
    ``backup_and_load_cache()`` / ``clear_and_load_backup()`` swap the slow weights in for an
    evaluation and back.

    Slow updates use the parameters that have a gradient at that step (the oracle's rule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | type[torch.optim.Optimizer],
        k: int = 5,
        alpha: float = 0.5,
        pullback_momentum: str = "none",
        **kwargs: Any,
    ) -> None:
        if k <= 0:
            raise ValueError("k must be positive")
        if not 0.0 <= alpha < 1.0:
            raise ValueError("alpha must be in the range [0.0, 1.0)")
        if pullback_momentum not in _PULLBACK:
            raise ValueError(
                f"pullback_momentum {pullback_momentum} must be one of ('none' or 'reset' or 'pullback')"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
                raise TypeError(f"optimizer must be an optimizer instance or class, got {optimizer!r}")
            if "params" not in kwargs:
                raise ValueError("need to pass `params` when you pass an optimizer class to Lookahead")
            params = kwargs.pop("params")
            optimizer = optimizer(params, **kwargs)
        elif kwargs:
            raise TypeError(f"unexpected arguments for an optimizer instance: {sorted(kwargs)}")
        # torch's base __init__ builds groups; here they are the inner optimizer's.
        self._bookkeeping()
        self.optimizer = optimizer
        self.k, self.alpha, self.pullback_momentum = k, alpha, pullback_momentum
        for group in self.param_groups:
            self._init_group(group)
        self.defaults = {
            "lookahead_alpha": alpha,
            "lookahead_k": k,
            "lookahead_pullback_momentum": pullback_momentum,
            **optimizer.defaults,
        }

    def _bookkeeping(self) -> None:
        self._store = StateStore()
        self._compiled = None
        self._restore_bookkeeping()

    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("counter", 0)
        for p in group["params"]:
            state = self.state[p]
            if "slow_params" not in state:
                state["slow_params"] = p.detach().clone()
                if self.pullback_momentum == "pullback":
                    state["slow_momentum"] = torch.zeros_like(p)

    # ------------------------------------------------------------------ the inner optimizer's groups
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; its parameters get their slow weights now."""
        self.optimizer.add_param_group(param_group)
        self._init_group(self.param_groups[-1])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, pullback_momentum={self.pullback_momentum!r}, " \
               f"optimizer={self.optimizer!r})"  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "optimizer": self.optimizer,
            "alpha": self.alpha,
            "k": self.k,
            "pullback_momentum": self.pullback_momentum,
            "defaults": self.defaults,
            "_step_count": self._step_count,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._bookkeeping()
        self.state = state.pop("state", defaultdict(dict))
        self.__dict__.update(state)
        if "defaults" not in self.__dict__:  # pickled by pytorch_optimizer
            self.defaults = {
                "lookahead_alpha": self.alpha,
                "lookahead_k": self.k,
                "lookahead_pullback_momentum": self.pullback_momentum,
                **self.optimizer.defaults,
            }

    # ------------------------------------------------------------------ the step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step; every ``k``-th (per group) also the slow update."""
        loss = self.optimizer.step(closure)
        for group in self.param_groups:
            group["counter"] += 1
            if group["counter"] >= self.k:
                group["counter"] = 0
                self._update(group)
        return loss

    @torch.no_grad()
    def _update(self, group: dict[str, Any]) -> None:
        """The slow update of one group, in the oracle's ops (``_foreach_lerp_``, ``_foreach_copy_``)."""
        self._init_group(group)  # parameters given to the inner optimizer behind our back
        params = [p for p in group["params"] if p.grad is not None]
        slow = [self.state[p]["slow_params"] for p in params]
        inner = self.optimizer.state
        for batch, batch_slow in _by_device_and_dtype(params, slow):
            torch._foreach_lerp_(batch, batch_slow, weight=1.0 - self.alpha)
            torch._foreach_copy_(batch_slow, batch)
            if self.pullback_momentum == "pullback":
                for p in batch:
                    if "momentum_buffer" not in inner[p]:
                        inner[p]["momentum_buffer"] = torch.zeros_like(p)
                buffers = [inner[p]["momentum_buffer"] for p in batch]
                slow_buffers = [self.state[p]["slow_momentum"] for p in batch]
                torch._foreach_lerp_(buffers, slow_buffers, weight=1.0 - self.alpha)
                torch._foreach_copy_(slow_buffers, buffers)
            elif self.pullback_momentum == "reset":
                for p in batch:
                    inner[p]["momentum_buffer"] = torch.zeros_like(p)

    # ------------------------------------------------------------------ evaluating the slow weights
    @torch.no_grad()
    def backup_and_load_cache(self) -> None:
        """Keep the fast weights (``backup_params``) and load the slow ones, for an evaluation."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["backup_params"] = p.detach().clone()
                p.copy_(state["slow_params"])

    @torch.no_grad()
    def clear_and_load_backup(self) -> None:
        """Put the fast weights back after :meth:`backup_and_load_cache`."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                p.copy_(state.pop("backup_params"))

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """``{"lookahead_state": {(group, index): {...}}, "base_optimizer": inner state dict}``
        (tensors not copied, as torch's state dicts)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        lookahead_state = {
            (gi, pi): dict(self.state[p])
            for gi, group in enumerate(self.param_groups)
            for pi, p in enumerate(group["params"])
            if p in self.state
        }
        state_dict = {"lookahead_state": lookahead_state, "base_optimizer": self.optimizer.state_dict()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``pytorch_optimizer.Lookahead``.

        Everything is checked before anything changes (the inner optimizer's part by the inner
        optimizer): a dict that does not fit raises ``ValueError`` and leaves the wrapper as it was.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, but got {type(state_dict).__name__}")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        missing = [key for key in ("lookahead_state", "base_optimizer") if key not in state_dict]
        if missing:
            raise ValueError(f"loaded Lookahead state dict is missing the key(s) {missing}")
        saved = state_dict["lookahead_state"]
        restored: dict[Tensor, dict[str, Any]] = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if (gi, pi) in saved:
                    restored[p] = saved[(gi, pi)]
        count = sum(len(group["params"]) for group in self.param_groups)
        if len(restored) != len(saved) or len(restored) != count:
            raise ValueError(
                f"lookahead state does not match the current parameters ({len(saved)} saved entries, "
                f"{count} parameters)"
            )
        for (gi, pi), value in ((key, saved[key]) for key in saved):
            p = self.param_groups[gi]["params"][pi]
            if not isinstance(value, dict):
                raise ValueError(f"lookahead state of parameter {(gi, pi)} must be a dict")
            for key, t in value.items():
                if isinstance(t, Tensor) and t.shape != p.shape:
                    raise ValueError(
                        f"lookahead state {key!r} of parameter {(gi, pi)} has shape {tuple(t.shape)}, "
                        f"but the parameter has shape {tuple(p.shape)}"
                    )
        self.optimizer.load_state_dict(state_dict["base_optimizer"])  # validates, then commits
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for p, value in restored.items():
            state[p] = {
                key: t.to(device=p.device, dtype=p.dtype, copy=True) if isinstance(t, Tensor) else t
                for key, t in value.items()
            }
        self.state = state
        for group in self.param_groups:
            group.setdefault("counter", 0)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

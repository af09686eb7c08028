"""Where optimizer state lives: per parameter, in torch's format, over flat buffers.

``opt.state`` is torch's ``defaultdict(dict)`` keyed by the parameter; the store owns it and
everything derived from it: the packed layouts of :mod:`.packed`, which keep the state of many
small parameters in one flat buffer per key. What a user gets:

* ``opt.state[p]["exp_avg"]`` is a live tensor of ``p``'s shape, updated in place at every step
  (as in torch). For a packed parameter it is a *view* of its pack's buffer: writing into it
  writes the optimizer's state, and replacing it is noticed (the pack is rebuilt).
* ``opt.state_dict()`` gives each packed entry as a tensor of its own (:meth:`standalone`), so
  ``torch.save(opt.state_dict())`` writes exactly what torch's would and safetensors accepts
  it. Saving ``opt.state[p]["exp_avg"]`` alone saves the view -- with its whole pack, as torch
  saves any view; ``.clone()`` it first (the docs say so).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from torch import Tensor

from ..rule import Rule

__all__ = ["StateStore"]


class StateStore:
    """The optimizer's ``state`` and the flat buffers some of it lives in."""

    def __init__(self) -> None:
        self.state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        #: Per parameter group (by ``id``), the plan of :mod:`.packed` (packs own flat buffers).
        self.layouts: dict[int, Any] = {}
        #: ``data_ptr`` of every live pack buffer's storage: the entries that are views.
        self.pack_storages: set[int] = set()

    def replace(self, state: defaultdict[Any, dict[str, Any]] | dict[Any, dict[str, Any]]) -> None:
        """A new state (``load_state_dict``, unpickling): the old layouts describe nothing now."""
        if not isinstance(state, defaultdict):
            state = defaultdict(dict, state)
        self.layouts.clear()
        self.pack_storages.clear()
        self.state = state

    def states(self, params: list[Tensor], group: dict[str, Any], rule: Rule) -> list[dict[str, Any]]:
        """Each parameter's state dict; a parameter's first step creates it from the rule's
        declaration. New states are not in ``state`` until :meth:`commit` (a parameter gets an
        entry only once it has state, as in torch: SGD without momentum has none)."""
        out = []
        get = self.state.get
        for p in params:
            st = get(p)
            if not st:
                st = rule.init_state(p, group)
            out.append(st)
        return out

    def commit(self, params: list[Tensor], states: list[dict[str, Any]]) -> None:
        for p, st in zip(params, states):
            if st and self.state.get(p) is not st:
                self.state[p] = st

    def is_view(self, t: Any) -> bool:
        """Whether ``t`` is a slice of a pack's buffer."""
        return isinstance(t, Tensor) and t.untyped_storage().data_ptr() in self.pack_storages

    def standalone(self, value: dict[str, Any]) -> dict[str, Any]:
        """A parameter's state with every pack view as a tensor of its own (for state dicts)."""
        if not self.pack_storages:
            return value
        return {k: v.clone() if self.is_view(v) else v for k, v in value.items()}

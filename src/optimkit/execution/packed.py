"""The default executor for elementwise rules: packs and chunks.

torch.optim's for-loop pays tens of microseconds of Python and dispatch per tensor and per op;
a model with thousands of small tensors spends its optimizer step in overhead. An elementwise
rule (every output element depends only on the same element of its inputs, plus scalars) gives
the *same bits* whether it runs on one tensor, on a slice of it, or on a buffer concatenating
many -- so the strategy only changes how tensors are fed to the one rule:

* **Big tensors** (at least ``SMALL`` elements) are updated in place, ``CHUNK`` elements per rule
  call. The rule's temporaries are then chunk-sized: they stay in cache and come from the
  allocator's free lists instead of fresh pages every step.
* **Small tensors** of one device and dtype, with equal scalar state (the same ``step``), are
  packed: their optimizer state lives in one flat buffer per state key (``opt.state[p]`` holds
  views into it, so ``state_dict()`` keeps torch's format), their parameters and gradients are
  gathered into a chunk-sized scratch buffer by one ``torch._foreach_copy_`` each, the rule runs
  once per pack, and the parameters are scattered back the same way. Parameters themselves are
  never re-pointed into shared storage (``safetensors`` and Hugging Face's tied-weight detection
  would see them as one tensor).
* Everything else -- tensors off the CPU, bfloat16/float16 (see ``_DTYPES``), complex, sparse, non-contiguous,
  tensor subclasses (a DTensor's local shard runs here: see :mod:`.sharded`),
  gradients of another dtype, a state entry the user replaced -- takes the per-tensor path.

Which state entries are param-shaped and which are per-parameter scalars is read from the
rule's declaration (:mod:`optimkit.rule`), never from a tensor's shape: a 0-dim parameter has
0-dim moments. Scalar state (``step``, NAdam's ``mu_product``, ASGD's ``eta``/``mu``) is per
parameter in torch's format. A pack keeps it as a 1-D buffer (one entry per parameter, each parameter's state
holding a 0-d view); the rule gets a fresh copy of the common value for each call, and the
result is broadcast back. Parameters whose scalars differ (one skipped a step) go to different
packs. The layout of a group is rebuilt when the set of packable parameters with gradients
changes (the state of the old packs gets storage of its own again first, so no parameter keeps
an old pack alive), and dropped by ``load_state_dict``. Layouts live in the job's
:class:`~.store.StateStore`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..rule import Rule
from . import sharded
from .job import Job
from .store import StateStore

__all__ = ["SMALL", "CHUNK", "CHUNKED", "Packed", "packable"]

#: Parameters with fewer elements than this are packed with others.
SMALL = 1 << 15
#: Elements per rule call (chunk of a big tensor, or the size a pack is filled up to).
CHUNK = 1 << 19
#: Tensors from this many elements on are chunked; smaller ones (but not small) take one rule
#: call, as in torch's for-loop. Chunking pays off where the rule's temporaries would be fresh
#: pages every step; below this size the extra per-chunk calls cost more than they save.
CHUNKED = 1 << 19

_PLAIN = (Tensor, torch.nn.Parameter)
_DTYPE, _DEVICE, _LAYOUT = (
    operator.attrgetter("dtype"),
    operator.attrgetter("device"),
    operator.attrgetter("layout"),
)
# Only these dtypes: for them torch's CPU kernels compute every element the same way wherever
# it sits in a tensor. For bfloat16/float16 the vectorized body and the scalar tail of a kernel
# round differently, so moving a tensor to another offset could change its bits.
_DTYPES = (torch.float32, torch.float64)

Run = Callable[..., None]  # rule(param, grad, state, **hyper)


@dataclass
class _Pack:
    """Small parameters updated together: one flat buffer per state key."""

    params: list[Tensor]
    index: list[int]  # positions of the params in the group's list of parameters with gradients
    state: dict[str, Tensor]  # param-shaped keys: flat buffers; scalar keys: one entry per param
    scalar_keys: tuple[str, ...]
    views: dict[str, list[Tensor]] = field(default_factory=dict)  # per key, per param
    dicts: list[dict[str, Any]] = field(default_factory=list)  # each param's state dict
    param_scratch: Tensor | None = None
    grad_scratch: Tensor | None = None
    param_views: list[Tensor] = field(default_factory=list)  # into param_scratch, shaped like params
    grad_views: list[Tensor] = field(default_factory=list)


@dataclass
class _Layout:
    """How a group's parameters with gradients are stepped, planned once and reused."""

    params: list[Tensor]  # the parameters (with gradients) it was planned for, in order
    rest: list[int]  # indices stepped one by one (big ones chunked)
    packs: list[_Pack]


def packable(rule: Rule, p: Tensor, g: Tensor, state: dict[str, Any]) -> bool:
    """A plain, contiguous CPU float32/float64 tensor with a dense gradient alike, and state
    exactly as the rule declares it (param-shaped entries alike, scalar entries 0-d tensors)."""
    if type(p) not in _PLAIN or type(g) is not Tensor or p.dtype not in _DTYPES:
        return False
    if p.device.type != "cpu":
        # Position-independence of the kernels is measured on the CPU only; elsewhere the
        # per-tensor path keeps the exactness guarantee.
        return False
    if g.layout != torch.strided or g.dtype != p.dtype or g.device != p.device:
        return False
    if not (p.is_contiguous() and g.is_contiguous()):
        return False
    for k, v in state.items():
        if not isinstance(v, Tensor) or type(v) is not Tensor:
            return False
        if k in rule.scalar_keys:
            if v.dim() != 0:
                return False
        elif k not in rule.param_keys:  # an entry the rule does not declare param-shaped
            return False
        elif v.shape != p.shape or v.dtype != p.dtype or v.device != p.device or not v.is_contiguous():
            return False
    return True


def _scalar_values(rule: Rule, state: dict[str, Any]) -> tuple:
    return tuple((k, v.dtype, v.device, v.item()) for k, v in sorted(state.items()) if k in rule.scalar_keys)


def _build_packs(
    store: StateStore, rule: Rule, params: list[Tensor], states: list[dict[str, Any]], small: list[int]
) -> list[_Pack]:
    """Group small parameters by (device, dtype, state keys, scalar values); fill packs up to
    ``CHUNK`` elements; move their state into flat buffers and give each parameter views."""
    buckets: dict[tuple, list[int]] = {}
    for i in small:
        p, st = params[i], states[i]
        shaped = tuple(sorted(k for k in st if k not in rule.scalar_keys))
        key = (p.device, p.dtype, shaped, _scalar_values(rule, st))
        buckets.setdefault(key, []).append(i)
    packs = []
    for (_, _, shaped_keys, scalars), members in buckets.items():
        batch: list[int] = []
        size = 0
        for i in members:
            if batch and size + params[i].numel() > CHUNK:
                packs.append(_make_pack(store, params, states, batch, shaped_keys, scalars))
                batch, size = [], 0
            batch.append(i)
            size += params[i].numel()
        if batch:
            packs.append(_make_pack(store, params, states, batch, shaped_keys, scalars))
    return packs


def _make_pack(store: StateStore, params: list[Tensor], states: list[dict[str, Any]], index: list[int],
               shaped_keys: tuple[str, ...], scalars: tuple) -> _Pack:  # fmt: skip
    members = [params[i] for i in index]
    pack = _Pack(params=members, index=index, state={}, scalar_keys=tuple(k for k, *_ in scalars))
    for key in shaped_keys:
        pack.state[key] = torch.cat([states[i][key].reshape(-1) for i in index])
    for key, *_ in scalars:
        pack.state[key] = torch.stack([states[i][key] for i in index])
    _give_views(store, pack)
    first = members[0]
    pack.param_scratch = torch.empty(sum(p.numel() for p in members), dtype=first.dtype, device=first.device)
    pack.grad_scratch = torch.empty_like(pack.param_scratch)
    pack.param_views = _split_like(pack.param_scratch, members)
    pack.grad_views = _split_like(pack.grad_scratch, members)
    return pack


def _split_like(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    return [v.view(p.shape) for v, p in zip(flat.split([p.numel() for p in params]), params)]


def _give_views(store: StateStore, pack: _Pack) -> None:
    """Point each parameter's state entries at its slice of the pack's buffers."""
    for key, buf in pack.state.items():
        views = list(buf.unbind(0)) if key in pack.scalar_keys else _split_like(buf, pack.params)
        _hand_out(store, pack, key, buf, views)


def _hand_out(store: StateStore, pack: _Pack, key: str, buf: Tensor, views: list[Tensor]) -> None:
    pack.views[key] = views
    store.pack_storages.add(buf.untyped_storage().data_ptr())
    for p, v in zip(pack.params, views):
        store.state[p][key] = v
    pack.dicts = [store.state[p] for p in pack.params]


def _release(store: StateStore, layout: _Layout) -> None:
    """Give the state of a layout's packs storage of its own again (before re-planning), so
    that no parameter's state keeps an unused pack buffer alive."""
    for pack in layout.packs:
        for key, buf in pack.state.items():
            store.pack_storages.discard(buf.untyped_storage().data_ptr())
            for st, view in zip(pack.dicts, pack.views.get(key, ())):
                if st.get(key) is view:
                    st[key] = view.clone()


def _pack_intact(store: StateStore, pack: _Pack, grads: list[Tensor]) -> bool:
    """False if a gradient is no longer dense and alike, a parameter's dtype or device
    changed, a state entry was replaced by the user, or the scalars drifted apart."""
    dtype, device = pack.param_scratch.dtype, pack.param_scratch.device
    # map/attrgetter keep these per-tensor checks in C: they run every step.
    pack_grads = [grads[i] for i in pack.index]
    for tensors in (pack_grads, pack.params):
        if set(map(_DTYPE, tensors)) != {dtype} or set(map(_DEVICE, tensors)) != {device}:
            return False
    if set(map(type, pack_grads)) != {Tensor} or set(map(_LAYOUT, pack_grads)) != {torch.strided}:
        return False
    # The state dicts and their entries must still be the ones the pack handed out.
    states = list(map(store.state.get, pack.params))
    if not pack.views:  # no state yet (SGD without momentum, or before its first step)
        return all(st is None for st in states)
    if not all(map(operator.is_, states, pack.dicts)):
        return False
    for key, views in pack.views.items():
        if not all(map(operator.is_, map(operator.methodcaller("get", key), states), views)):
            return False
    if any(len(st) != len(pack.views) for st in states):
        return False
    for key in pack.scalar_keys:
        buf = pack.state[key]
        if not torch.equal(buf, buf[:1].expand_as(buf)):
            return False
    return True


def _run_chunked(run: Run, rule: Rule, p: Tensor, g: Tensor, st: dict[str, Any], hyper: dict[str, Any]) -> None:
    """A big tensor in place, ``CHUNK`` elements per rule call."""
    n = p.numel()
    flat_p, flat_g = p.view(-1), g.view(-1)
    shaped = {k: v.view(-1) for k, v in st.items() if k not in rule.scalar_keys}
    scalars = {k: v for k, v in st.items() if k in rule.scalar_keys}
    created: dict[str, Tensor] = {}
    after: dict[str, Tensor] = {}
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        # Each call starts from the scalars as they were before the step (one step, many calls).
        chunk_state = {k: v.clone() for k, v in scalars.items()}
        chunk_state.update({k: v[lo:hi] for k, v in shaped.items()})
        run(flat_p[lo:hi], flat_g[lo:hi], chunk_state, **hyper)
        for k, v in chunk_state.items():
            if k in scalars:
                after[k] = v
            elif k not in shaped:  # created by the rule in this step (SGD's first buffer)
                if k not in created:
                    created[k] = torch.empty(n, dtype=v.dtype, device=v.device)
                created[k][lo:hi].copy_(v)
    for k, v in after.items():
        scalars[k].copy_(v)
    for k, v in created.items():
        st[k] = v.view(p.shape)


def run_one(run: Run, rule: Rule, hyper: dict[str, Any], chunked: bool, p: Tensor, g: Tensor,
            st: dict[str, Any]) -> None:  # fmt: skip
    """One tensor: chunked if it is big (and ``chunked``), else one rule call."""
    if chunked and p.numel() >= CHUNKED and packable(rule, p, g, st):
        _run_chunked(run, rule, p, g, st, hyper)
    else:
        run(p, g, st, **hyper)


def _run_pack(run: Run, store: StateStore, pack: _Pack, grads: list[Tensor], hyper: dict[str, Any]) -> None:
    torch._foreach_copy_(pack.param_views, pack.params)
    torch._foreach_copy_(pack.grad_views, grads)
    state = {k: v for k, v in pack.state.items() if k not in pack.scalar_keys}
    state.update({k: pack.state[k][0].clone() for k in pack.scalar_keys})
    run(pack.param_scratch, pack.grad_scratch, state, **hyper)
    torch._foreach_copy_(pack.params, pack.param_views)
    for key, value in state.items():
        if key in pack.scalar_keys:
            pack.state[key].copy_(value)
        elif key not in pack.state:  # created by the rule (SGD's momentum buffer)
            pack.state[key] = value
            _hand_out(store, pack, key, value, _split_like(value, pack.params))


class Packed:
    """Small tensors packed, big ones chunked (see the module docstring); DTensor parameters
    run the same way on their local shards (:mod:`.sharded`).

    Args:
        run: ``run(job)`` gives the function to call in place of the rule's own (``compile=True``
            passes the compiled rule, see :mod:`.compiled`); None: the rule's function.
        chunked: feed big tensors in chunks (default: the rule's ``chunk_big``).
    """

    def __init__(self, run: Callable[[Job], Run] | None = None, chunked: bool | None = None) -> None:
        self._run = run
        self._chunked = chunked

    def step(self, job: Job) -> None:
        rule, store, params, grads, hyper = job.rule, job.store, job.params, job.grads, job.hyper
        run = self._run(job) if self._run is not None else rule.fn
        chunked = rule.caps.chunk_big if self._chunked is None else self._chunked
        layout = store.layouts.get(id(job.group))
        if layout is None or not _still_fits(store, layout, params, grads):
            if layout is not None:
                _release(store, layout)
            layout = store.layouts[id(job.group)] = _plan(job)
        rest = [params[i] for i in layout.rest]
        states = job.states(rest)
        one = functools.partial(run_one, run, rule, hyper, chunked)
        try:
            for i, p, st in zip(layout.rest, rest, states):
                if type(p) in _PLAIN:
                    one(p, grads[i], st)
                elif sharded.is_dtensor(p):  # sharded: the same rule on the local shards
                    sharded.step_local(one, p, grads[i], st)
                else:
                    run(p, grads[i], st, **hyper)
        finally:  # a rule raising midway: no parameter moved without its state
            store.commit(rest, states)
        for pack in layout.packs:
            _run_pack(run, store, pack, [grads[i] for i in pack.index], hyper)


def _plan(job: Job) -> _Layout:
    """Decide which parameters are packed (moving their state into the packs' buffers)."""
    params, grads, store = job.params, job.grads, job.store
    states = job.states()
    if len({id(p) for p in params}) != len(params):
        # A parameter listed twice is stepped twice in a row by torch: keep every one solo.
        return _Layout(params=list(params), rest=list(range(len(params))), packs=[])
    small, rest = [], []
    for i, (p, g, st) in enumerate(zip(params, grads, states)):
        if p.numel() < SMALL and packable(job.rule, p, g, st):
            small.append(i)
            if st and p not in store.state:  # a pack's members keep their state in the store
                store.state[p] = st
        else:
            rest.append(i)
    return _Layout(params=list(params), rest=rest, packs=_build_packs(store, job.rule, params, states, small))


def _still_fits(store: StateStore, layout: _Layout, params: list[Tensor], grads: list[Tensor]) -> bool:
    """The same parameters have gradients as when the layout was planned, and every pack is
    intact (its gradients dense and alike, its state not replaced, its scalars equal)."""
    if len(params) != len(layout.params) or not all(map(operator.is_, params, layout.params)):
        return False
    return all(_pack_intact(store, pack, grads) for pack in layout.packs)

"""The default execution strategy for elementwise rules: packs and chunks.

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
* Everything else -- bfloat16/float16 (see ``_DTYPES``), complex, sparse, non-contiguous,
  tensor subclasses such as DTensor,
  gradients of another dtype, a state entry the user replaced -- takes the per-tensor path.

Scalar state (``step``, NAdam's ``mu_product``, ASGD's ``eta``/``mu``) is per parameter in
torch's format. A pack keeps it as a 1-D buffer (one entry per parameter, each parameter's state
holding a 0-d view); the rule gets a fresh copy of the common value for each call, and the
result is broadcast back. Parameters whose scalars differ (one skipped a step) go to different
packs. The layout of a group is rebuilt when the set of packable parameters with gradients
changes, and dropped by ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["SMALL", "CHUNK", "step_elementwise"]

#: Parameters with fewer elements than this are packed with others.
SMALL = 1 << 15
#: Elements per rule call (chunk of a big tensor, or the size a pack is filled up to).
CHUNK = 1 << 17

_PLAIN = (Tensor, torch.nn.Parameter)
# Only these dtypes: for them torch's CPU kernels compute every element the same way wherever
# it sits in a tensor. For bfloat16/float16 the vectorized body and the scalar tail of a kernel
# round differently, so moving a tensor to another offset could change its bits.
_DTYPES = (torch.float32, torch.float64)


@dataclass
class _Pack:
    """Small parameters updated together: one flat buffer per state key."""

    params: list[Tensor]
    state: dict[str, Tensor]  # param-shaped keys: flat buffers; scalar keys: one entry per param
    scalar_keys: tuple[str, ...]
    views: dict[str, list[Tensor]] = field(default_factory=dict)  # per key, per param
    param_scratch: Tensor | None = None
    grad_scratch: Tensor | None = None
    param_views: list[Tensor] = field(default_factory=list)  # into param_scratch, shaped like params
    grad_views: list[Tensor] = field(default_factory=list)


@dataclass
class _Layout:
    signature: tuple
    packs: list[_Pack]


def _packable(p: Tensor, g: Tensor, state: dict[str, Any]) -> bool:
    if type(p) not in _PLAIN or type(g) is not Tensor or p.dtype not in _DTYPES:
        return False
    if g.layout != torch.strided or g.dtype != p.dtype or g.device != p.device:
        return False
    if not (p.is_contiguous() and g.is_contiguous()):
        return False
    for v in state.values():
        if not isinstance(v, Tensor) or type(v) is not Tensor:
            return False
        if v.dim() == 0:
            continue
        if v.shape != p.shape or v.dtype != p.dtype or v.device != p.device or not v.is_contiguous():
            return False
    return True


def _scalar_values(state: dict[str, Any]) -> tuple:
    return tuple((k, v.dtype, v.device, v.item()) for k, v in sorted(state.items()) if v.dim() == 0)


def _build_packs(opt: Any, small: list[tuple[Tensor, dict[str, Any]]]) -> list[_Pack]:
    """Group small parameters by (device, dtype, state keys, scalar values); fill packs up to
    ``CHUNK`` elements; move their state into flat buffers and give each parameter views."""
    buckets: dict[tuple, list[tuple[Tensor, dict[str, Any]]]] = {}
    for p, st in small:
        key = (p.device, p.dtype, tuple(sorted(k for k, v in st.items() if v.dim() > 0)), _scalar_values(st))
        buckets.setdefault(key, []).append((p, st))
    packs = []
    for (_, _, shaped_keys, scalars), members in buckets.items():
        batch: list[tuple[Tensor, dict[str, Any]]] = []
        size = 0
        for p, st in members:
            if batch and size + p.numel() > CHUNK:
                packs.append(_make_pack(opt, batch, shaped_keys, scalars))
                batch, size = [], 0
            batch.append((p, st))
            size += p.numel()
        if batch:
            packs.append(_make_pack(opt, batch, shaped_keys, scalars))
    return packs


def _make_pack(opt: Any, members: list, shaped_keys: tuple[str, ...], scalars: tuple) -> _Pack:
    params = [p for p, _ in members]
    pack = _Pack(params=params, state={}, scalar_keys=tuple(k for k, *_ in scalars))
    for key in shaped_keys:
        pack.state[key] = torch.cat([st[key].reshape(-1) for _, st in members])
    for key, *_ in scalars:
        pack.state[key] = torch.stack([st[key] for _, st in members])
    _give_views(opt, pack)
    first = params[0]
    total = sum(p.numel() for p in params)
    pack.param_scratch = torch.empty(total, dtype=first.dtype, device=first.device)
    pack.grad_scratch = torch.empty_like(pack.param_scratch)
    pack.param_views = _split_like(pack.param_scratch, params)
    pack.grad_views = _split_like(pack.grad_scratch, params)
    return pack


def _split_like(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    return [v.view(p.shape) for v, p in zip(flat.split([p.numel() for p in params]), params)]


def _give_views(opt: Any, pack: _Pack) -> None:
    """Point each parameter's state entries at its slice of the pack's buffers."""
    for key, buf in pack.state.items():
        if key in pack.scalar_keys:
            views = list(buf.unbind(0))
        else:
            views = _split_like(buf, pack.params)
        pack.views[key] = views
        for p, v in zip(pack.params, views):
            opt.state[p][key] = v


def _pack_intact(opt: Any, pack: _Pack) -> bool:
    """False if the user replaced a state entry or a parameter's dtype/shape/device changed."""
    state = opt.state
    dtype, device = pack.param_scratch.dtype, pack.param_scratch.device
    for i, p in enumerate(pack.params):
        if p.dtype != dtype or p.device != device or p.shape != pack.param_views[i].shape:
            return False
        st = state.get(p, {})
        if len(st) != len(pack.views):
            return False
        for key, views in pack.views.items():
            if st.get(key) is not views[i]:
                return False
    for key in pack.scalar_keys:
        buf = pack.state[key]
        if not torch.equal(buf, buf[:1].expand_as(buf)):
            return False
    return True


def _run_chunked(rule: Any, p: Tensor, g: Tensor, st: dict[str, Any], hyper: dict[str, Any]) -> None:
    """A big tensor in place, ``CHUNK`` elements per rule call."""
    n = p.numel()
    flat_p, flat_g = p.view(-1), g.view(-1)
    shaped = {k: v.view(-1) for k, v in st.items() if v.dim() > 0}
    scalars = {k: v for k, v in st.items() if v.dim() == 0}
    created: dict[str, Tensor] = {}
    after: dict[str, Tensor] = {}
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        # Each call starts from the scalars as they were before the step (one step, many calls).
        chunk_state = {k: v.clone() for k, v in scalars.items()}
        chunk_state.update({k: v[lo:hi] for k, v in shaped.items()})
        rule(flat_p[lo:hi], flat_g[lo:hi], chunk_state, **hyper)
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


def _run_pack(opt: Any, rule: Any, pack: _Pack, grads: list[Tensor], hyper: dict[str, Any]) -> None:
    torch._foreach_copy_(pack.param_views, pack.params)
    torch._foreach_copy_(pack.grad_views, grads)
    state = {k: v for k, v in pack.state.items() if k not in pack.scalar_keys}
    state.update({k: pack.state[k][0].clone() for k in pack.scalar_keys})
    rule(pack.param_scratch, pack.grad_scratch, state, **hyper)
    torch._foreach_copy_(pack.params, pack.param_views)
    for key, value in state.items():
        if key in pack.scalar_keys:
            pack.state[key].copy_(value)
        elif key not in pack.state:  # created by the rule (SGD's momentum buffer)
            pack.state[key] = value
            views = _split_like(value, pack.params)
            pack.views[key] = views
            for p, v in zip(pack.params, views):
                opt.state[p][key] = v


def step_elementwise(opt: Any, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     states: list[dict[str, Any]], hyper: dict[str, Any]) -> None:  # fmt: skip
    """One step of ``group`` with ``opt``'s elementwise rule (see the module docstring)."""
    rule = type(opt)._rule
    if len({id(p) for p in params}) != len(params):
        # A parameter listed twice is stepped twice in a row by torch; keep that order.
        for p, g, st in zip(params, grads, states):
            rule(p, g, st, **hyper)
        opt._store_states(params, states)
        return
    small: list[tuple[Tensor, dict[str, Any]]] = []
    small_grads: dict[Tensor, Tensor] = {}
    for p, g, st in zip(params, grads, states):
        if not _packable(p, g, st):
            rule(p, g, st, **hyper)
            opt._store_states([p], [st])
        elif p.numel() >= SMALL:
            _run_chunked(rule, p, g, st, hyper)
            opt._store_states([p], [st])
        else:
            small.append((p, st))
            small_grads[p] = g
    if not small:
        return
    for p, st in small:  # a pack's members need their state in opt.state (views are put there)
        if st and p not in opt.state:
            opt.state[p] = st
    signature = tuple((id(p), len(st)) for p, st in small)
    layouts = opt.__dict__.setdefault("_flat_layouts", {})
    layout = layouts.get(id(group))
    if (
        layout is None
        or layout.signature != signature
        or not all(_pack_intact(opt, pk) for pk in layout.packs)
    ):
        layout = _Layout(signature, _build_packs(opt, small))
        layouts[id(group)] = layout
    for pack in layout.packs:
        _run_pack(opt, rule, pack, [small_grads[p] for p in pack.params], hyper)

r"""Encoded state (:mod:`.encoded`) of DTensor parameters (FSDP2's ``fully_shard``).

An encoded moment is stepped like any elementwise state under FSDP2 (:mod:`.sharded`): on the
local shards, with no communication. Each rank decodes, updates and encodes its own shard,
and its blocks run over its own shard's elements. The state stays sharded like the parameter,
so ``opt.state_dict()``, ``get_optimizer_state_dict`` and ``torch.distributed.checkpoint``
save it shard by shard and reshard it on load:

==========================  ======================================  ======================
entry                       global shape (DTensor)                  placements
==========================  ======================================  ======================
``exp_avg`` (8bit/fp8/bf16)  the parameter's ``(R, ...)``            the parameter's
``exp_avg`` (4bit)           ``(R, row // 2)`` (two codes a byte)     the parameter's
``exp_avg.scale``            ``(R, row // block_size)``              the parameter's
==========================  ======================================  ======================

where ``R = p.shape[0]`` and ``row = p.numel() // R``. A blockwise encoding (8bit, 4bit,
fp8) takes a DTensor parameter when its placements are ``Shard(0)`` or ``Replicate()``
(FSDP2, HSDP) and ``row`` is a multiple of the block size: every shard then starts on a block
boundary and holds whole blocks, each row has its own scales, and the blocks of the shards
*are* the blocks of the whole tensor -- the state is bit for bit that of one process running
the same optimizer on the full tensors, and it reshards to any number of ranks (the scales of
a row travel with the row). ``bf16`` has no blocks and takes any placements.

Other DTensor parameters -- 1-D ones (biases, norms), rows that are no multiple of the block
(a ``(4096, 100)`` matrix with 256-element blocks), sharding on another dimension (tensor
parallelism) -- keep their moments in full precision, sharded like the parameter, as
parameters under :data:`~.encodings.MIN_SIZE` elements do. (Blocks over an arbitrary shard
would give a result that depends on the number of ranks and could not be resharded.)
Parameters in bfloat16 that ask for stochastic rounding or Kahan summation are not taken
either (their rounding is not implemented on shards): they run as ordinary FSDP2 parameters.

Loading (``load_state_dict``, ``set_optimizer_state_dict``, DCP) converts what is not in the
group's encoding, on the local shards: saved float moments are encoded, encoded moments
decoded where the parameter keeps full precision, and a full (unsharded) state dict -- a
one-process optimizer's, or a gathered one -- is decoded and each rank keeps its shard.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import sharded
from .encodings import MIN_SIZE, SCALE, Encoding, encoding

__all__ = ["takes", "layout_ok", "step", "conform"]


def _rows(p: Any) -> tuple[int, int]:
    """``(R, row)``: the parameter's first dimension and the elements of one row."""
    rows = p.shape[0] if p.dim() else 1
    return rows, (p.numel() // rows if rows else 0)


def layout_ok(p: Any, enc: Encoding) -> bool:
    """Whether ``p``'s moments can be encoded on its local shards and stored sharded like it
    (see the module): always for bf16; blockwise encodings need ``Shard(0)``/``Replicate()``
    placements and rows of whole blocks."""
    if enc.block_size is None:
        return True
    from torch.distributed.tensor import Shard

    if p.dim() < 2 or p.shape[0] == 0:
        return False
    _, row = _rows(p)
    if row == 0 or row % enc.block_size:
        return False
    # type() is Shard, not isinstance: _StridedShard (FSDP2 over tensor parallelism) is a
    # subclass whose local shard is not one range of rows.
    return all(pl.is_replicate() or (type(pl) is Shard and pl.dim == 0) for pl in p.placements)


def _target(p: Any, enc: Encoding | None) -> Encoding | None:
    """The encoding ``p``'s moments are kept in: ``enc``, or None (full precision)."""
    if enc is None or p.numel() < MIN_SIZE or not p.is_floating_point() or not p.to_local().is_contiguous():
        return None
    return enc if layout_ok(p, enc) else None


def takes(p: Any, g: Any, enc: Encoding) -> bool:
    """Whether the encoded executor steps the DTensor parameter ``p`` (the rest run as
    ordinary FSDP2 parameters, full precision)."""
    return sharded.is_dtensor(g) and _target(p, enc) is not None


def _codes_shape(p: Any, enc: Encoding) -> tuple[int, ...]:
    rows, row = _rows(p)
    return (rows, row // 2) if getattr(enc, "bits", 8) == 4 else tuple(p.shape)


def _wrap(local: Tensor, p: Any, shape: tuple[int, ...]) -> Any:
    """The DTensor with ``p``'s mesh and placements, global ``shape``, and this rank's
    ``local`` rows (``local`` has the rows of ``p``'s local shard)."""
    if len(shape) > 1:
        local = local.view(p.to_local().shape[0], *shape[1:])
    stride, step = [], 1
    for size in reversed(shape):  # contiguous
        stride.insert(0, step)
        step *= max(size, 1)
    return sharded._dtensor_type().from_local(
        local, p.device_mesh, p.placements, run_check=False, shape=torch.Size(shape), stride=tuple(stride)
    )


def _in_form(p: Any, enc: Encoding, st: dict[str, Any], key: str) -> bool:
    """Whether ``st[key]`` is ``enc``'s sharded form for ``p`` (see the module table)."""
    v, s = st.get(key), st.get(key + SCALE)
    if not sharded.is_dtensor(v) or v.device_mesh != p.device_mesh:
        return False
    if enc.block_size is None:
        return s is None and v.dtype == torch.bfloat16 and v.shape == p.shape
    rows, row = _rows(p)
    dtype = torch.float8_e4m3fn if enc.name == "fp8" else torch.uint8
    return (
        sharded.is_dtensor(s) and s.device_mesh == p.device_mesh
        and v.dtype == dtype and tuple(v.shape) == _codes_shape(p, enc)
        and s.dtype == enc.scale_dtype and tuple(s.shape) == (rows, row // enc.block_size)
    )  # fmt: skip


def _sharded_source(p: Any, v: Any, s: Any) -> Encoding:
    """The encoding of a moment stored in the sharded form (codes ``v``, scales ``s``)."""
    rows, row = _rows(p)
    if s.dim() != 2 or s.shape[0] != rows or not s.shape[1] or row % s.shape[1]:
        raise ValueError(f"sharded scales of shape {tuple(s.shape)} do not fit a parameter of shape {tuple(p.shape)}")
    if v.dtype == torch.float8_e4m3fn:
        name = "fp8"
    elif tuple(v.shape) == tuple(p.shape):
        name = "8bit"
    elif tuple(v.shape) == (rows, row // 2):
        name = "4bit"
    else:
        raise ValueError(f"sharded codes of shape {tuple(v.shape)} do not fit a parameter of shape {tuple(p.shape)}")
    return encoding(name, row // s.shape[1])


def _local_value(p: Any, st: dict[str, Any], key: str, signed: bool) -> tuple[Tensor, str]:
    """This rank's shard of the moment ``st[key]`` as float32 (1-D), whatever its form, and
    the name of that form."""
    from . import encoded

    v, s = st[key], st.get(key + SCALE)
    n_local = p.to_local().numel()
    if sharded.is_dtensor(v) and s is None:
        if v.shape != p.shape:
            raise ValueError(f"state {key!r} has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}")
        local = sharded._like_param(v, p).to_local()
        name = "bf16" if v.dtype == torch.bfloat16 and p.dtype != torch.bfloat16 else str(v.dtype)[6:]
        return local.reshape(-1).float(), name
    if sharded.is_dtensor(v):  # the sharded form of an encoding (another one, or another block size)
        source = _sharded_source(p, v, s)
        codes = sharded._like_param(v, p).to_local().reshape(-1)
        scale = sharded._like_param(s, p).to_local().reshape(-1)
        return source.decode({"codes": codes, "scale": scale}, signed, 0, n_local), source.name
    # A plain tensor: a full (unsharded) moment, e.g. a one-process state dict loaded on every
    # rank. Decode the whole (every rank alike) and keep this rank's shard.
    source = encoded._foreign(st, key, p)
    if source is None:
        full, name = v.reshape(-1).float(), str(v.dtype)[6:]
    else:
        full, name = source.decode(encoded._stored(st, key), signed, 0, p.numel()), source.name
    if full.numel() != p.numel():
        raise ValueError(f"state {key!r} has {full.numel()} elements, its parameter {p.numel()}")
    return sharded.shard_like(full.view(p.shape), p).to_local().reshape(-1), name


def _put(st: dict[str, Any], key: str, stored: dict[str, Tensor], p: Any, enc: Encoding) -> None:
    st[key] = _wrap(stored["codes"], p, _codes_shape(p, enc))
    if "scale" in stored:
        rows, row = _rows(p)
        st[key + SCALE] = _wrap(stored["scale"], p, (rows, row // enc.block_size))
    else:
        st.pop(key + SCALE, None)


def _same(source: Encoding | None, target: Encoding, v: Tensor) -> bool:
    if source is None:  # plain: a bfloat16 moment is already bf16's form
        return target.name == "bf16" and v.dtype == torch.bfloat16
    return source.name == target.name and source.block_size == target.block_size


def conform(rule: Any, p: Any, st: dict[str, Any], group: dict[str, Any]) -> list[str]:
    """:func:`.encoded.conform` for a DTensor parameter: bring its moments into the group's
    encoding in the sharded form (or into full precision where ``p`` keeps it), on the local
    shards. Returns ``"key: from -> to"`` for each change."""
    from . import encoded

    enc = encoded.encoding_of(group)
    target = _target(p, enc)
    local_p = p.to_local()
    changes = []
    for key, sign in rule.encodable.items():
        v = st.get(key)
        if not isinstance(v, Tensor):
            continue
        if target is not None and _in_form(p, target, st, key):
            for k in (key, key + SCALE):  # loaded with other placements: lay out like p
                if k in st and not sharded._same_layout(st[k], p):
                    st[k] = st[k].redistribute(p.device_mesh, p.placements)
            continue
        plain = key + SCALE not in st and sharded.is_dtensor(v) and not (
            v.dtype == torch.bfloat16 and p.dtype != torch.bfloat16
        )
        if target is None and plain:  # full precision, as wanted
            continue
        if target is not None and not sharded.is_dtensor(v) and _same(encoded._foreign(st, key, p), target, v):
            # A full moment in this very encoding (a one-process state dict loaded on every
            # rank): each rank keeps its rows of codes and scales, exactly (no re-encoding).
            st[key] = sharded.shard_like(v.reshape(_codes_shape(p, target)), p)
            if key + SCALE in st:
                rows, row = _rows(p)
                st[key + SCALE] = sharded.shard_like(st[key + SCALE].reshape(rows, row // target.block_size), p)
            continue
        value, source = _local_value(p, st, key, sign == "signed")
        if target is None:
            st.pop(key + SCALE, None)
            st[key] = sharded._wrap(value.to(p.dtype).view(local_p.shape), p)
            to = str(p.dtype)[6:]
        else:
            stored = target.empty(local_p.numel(), sign == "signed", local_p.device)
            target.encode_(value, sign == "signed", stored)
            _put(st, key, stored, p, target)
            to = target.name
        changes.append(f"{key}: {source} -> {to} (sharded)")
    return changes


def step(rule: Any, p: Any, g: Any, st: dict[str, Any], group: dict[str, Any], hyper: dict[str, Any],
         enc: Encoding) -> None:  # fmt: skip
    """One step of the DTensor parameter ``p`` (``takes`` said yes): the encoded step of
    :mod:`.encoded` on the local shards, the new state wrapped sharded like ``p``."""
    from . import encoded

    n = p.numel()
    if st and any(k in st and not _in_form(p, enc, st, k) for k in rule.encodable):
        conform(rule, p, st, group)  # state from before the encoding was set
    local_p, local_g = p.to_local(), sharded._like_param(g, p).to_local()
    local_st: dict[str, Any] = {}
    if not st:
        encoded._init(rule, local_p, local_st, group, enc, whole=n)
    else:
        for k, v in st.items():
            if sharded.is_dtensor(v):
                if not sharded._same_layout(v, p):
                    v = st[k] = v.redistribute(p.device_mesh, p.placements)
                # Views of the DTensors' local tensors: the step writes into them in place.
                v = v.to_local()
                local_st[k] = v.view(-1) if k.endswith(SCALE) or k + SCALE in st else v
            else:
                local_st[k] = v
    if not encoded.kernel_step(rule, local_p, local_g, local_st, hyper, enc):  # AdamW: as one process
        encoded._step(rule, local_p, local_g, local_st, group, hyper, enc, False, False, whole=n)
    for k, v in local_st.items():  # what _init or the rule created: sharded like p
        if k in st or k.endswith(SCALE):
            continue
        if k + SCALE in local_st:  # blockwise codes (bf16 codes are param-shaped: below)
            _put(st, k, {"codes": v.reshape(-1), "scale": local_st[k + SCALE]}, p, enc)
        elif isinstance(v, Tensor) and v.dim() > 0 and v.shape == local_p.shape:
            st[k] = sharded._wrap(v, p)
        else:
            st[k] = v

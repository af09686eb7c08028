"""Sharded parameters (DTensor: FSDP2's ``fully_shard``, tensor parallelism).

Under FSDP2 every parameter, its gradient and (because state is created with ``zeros_like``)
its param-shaped optimizer state are DTensors: a global shape plus a local shard per rank.
Two ways to run a rule on them, chosen by what the rule needs:

* **On the local shards** (elementwise rules: SGD, Adam, RMSprop, ...). An output element
  depends only on the same element of the inputs, so updating each rank's shard with the
  rule gives exactly the shard of the unsharded update, with no communication. The rule
  runs on the plain local tensors (through the same code as any other plain tensor: big
  shards are chunked), the state stays DTensor (sharded like the parameter), so
  ``torch.distributed.checkpoint`` saves and reshards it. Running on the local tensors also
  avoids DTensor's refusal of some in-place ops (Rprop's masked assignment).
* **Gathered** (rules that need a whole tensor: Muon's orthogonalization, Adafactor's row
  and column statistics). The parameter, gradient and sharded state are all-gathered, the
  rule runs on the full tensors -- identical inputs and ops on every rank, so identical
  results -- and every rank keeps its shard. Param-shaped state stays sharded; the small
  factored state (Adafactor's row/column variances) is replicated as plain tensors. This
  costs an all-gather of a parameter's tensors per step and a full copy of one parameter at
  a time; it is correct rather than fast.

Optimizers that need the whole flattened model at once (LBFGS) refuse DTensor parameters
with an error that says so.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor

__all__ = [
    "is_dtensor", "any_dtensor", "to_local", "from_local", "step_local", "step_gathered",
    "shard_like", "refuse", "localize_loaded",
]  # fmt: skip

def _dtensor_type() -> Any:
    """The DTensor class if torch's DTensor module is loaded, else None. A DTensor cannot
    exist before its module is imported, so checking ``sys.modules`` is enough -- and keeps
    ``import optimkit`` from importing torch.distributed (~0.6 s)."""
    for name in ("torch.distributed.tensor._api", "torch.distributed._tensor.api"):  # torch >= 2.5, 2.4
        module = sys.modules.get(name)
        if module is not None:
            return module.DTensor
    return None


def is_dtensor(t: Any) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def any_dtensor(tensors: list[Tensor]) -> bool:
    cls = _dtensor_type()
    return cls is not None and any(isinstance(t, cls) for t in tensors)


def _same_layout(t: Any, p: Any) -> bool:
    return t.device_mesh == p.device_mesh and tuple(t.placements) == tuple(p.placements)


def _like_param(t: Tensor, p: Any) -> Tensor:
    """``t`` (a DTensor) laid out exactly like ``p``: gradients can arrive partial or
    replicated (tensor parallelism), a loaded state with other placements."""
    return t if _same_layout(t, p) else t.redistribute(p.device_mesh, p.placements)


def shard_like(full: Tensor, p: Any) -> Any:
    """The DTensor laid out like ``p`` whose global value is ``full`` (every rank holds the
    same ``full``; each just keeps its slice -- no communication)."""
    try:
        from torch.distributed.tensor import distribute_tensor
    except ImportError:  # torch 2.4
        from torch.distributed._tensor import distribute_tensor
    try:
        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
    except TypeError:  # torch < 2.6: no src_data_rank; rank 0 scatters the same values
        return distribute_tensor(full, p.device_mesh, p.placements)


def _wrap(local: Tensor, p: Any) -> Any:
    return _dtensor_type().from_local(
        local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def to_local(p: Any, g: Tensor, st: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The local shards of ``p``, of its gradient and of its param-shaped state laid out like
    ``p`` (scalar state such as ``step`` is a plain tensor, as in torch, and passes as is)."""
    g = _like_param(g, p)
    local_st: dict[str, Any] = {}
    for k, v in st.items():
        if is_dtensor(v):
            if v.shape != p.shape:
                raise RuntimeError(
                    f"optimizer state {k!r} is a DTensor of shape {tuple(v.shape)} but its parameter "
                    f"has shape {tuple(p.shape)}; an elementwise rule needs param-shaped state"
                )
            v = st[k] = _like_param(v, p)
            local_st[k] = v.to_local()
        else:
            local_st[k] = v
    return p.to_local(), g.to_local(), local_st


def from_local(p: Any, st: dict[str, Any], local_st: dict[str, Any]) -> None:
    """Store what a rule created or replaced in ``local_st`` back into ``st`` (new
    param-shaped tensors, like SGD's first momentum buffer, become DTensors like ``p``)."""
    for k, v in local_st.items():
        if k not in st:
            st[k] = _wrap(v, p) if v.dim() > 0 else v
        elif not is_dtensor(st[k]):
            st[k] = v


def step_local(run: Any, p: Any, g: Tensor, st: dict[str, Any]) -> None:
    """Run ``run(param, grad, state)`` (an elementwise rule, already bound to its
    hyperparameters) on the local shards of ``p``, its gradient and its state."""
    local_p, local_g, local_st = to_local(p, g, st)
    run(local_p, local_g, local_st)
    from_local(p, st, local_st)


def full_state(st: dict[str, Any]) -> dict[str, Any]:
    return {k: v.full_tensor() if is_dtensor(v) else v for k, v in st.items()}


def step_gathered(run: Any, p: Any, g: Tensor, st: dict[str, Any], init: Any) -> None:
    """Run ``run(param, grad, state)`` on the full tensors; keep this rank's shards.

    ``init(full_param, full_grad)`` creates the state for a first step from full tensors, so
    state shapes that depend on the whole parameter (Adafactor's row/column variances) come
    out right. Param-shaped state is then sharded like the parameter; the rest replicated
    (numbers, and containers such as SOAP's lists of matrices, as they are).
    """
    full_p = p.full_tensor()
    full_g = _like_param(g, p).full_tensor()
    fresh = not st
    full_st = init(full_p, full_g) if fresh else full_state(st)
    run(full_p, full_g, full_st)
    p.to_local().copy_(shard_like(full_p, p).to_local())
    for k, v in full_st.items():
        old = st.get(k)
        if is_dtensor(old):
            old.to_local().copy_(shard_like(v, old).to_local())
        elif fresh and isinstance(v, Tensor) and v.dim() > 0 and v.shape == p.shape:
            st[k] = shard_like(v, p)
        else:
            st[k] = v


def refuse(optimizer: str, why: str) -> None:
    raise RuntimeError(
        f"{optimizer} does not support DTensor parameters (FSDP2's fully_shard, tensor parallelism): "
        f"{why}. Train it with DDP or in one process."
    )


def localize_loaded(value: Tensor, p: Any) -> Tensor:
    """A plain param-shaped state tensor loaded for a DTensor parameter (a full, unsharded
    optimizer state dict loaded on every rank) becomes this rank's shard."""
    if is_dtensor(p) and not is_dtensor(value) and value.dim() > 0 and value.shape == p.shape:
        return shard_like(value, p)
    return value

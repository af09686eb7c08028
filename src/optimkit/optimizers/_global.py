r"""What the learning-rate-free optimizers (Prodigy, D-Adaptation) share: a step over every
parameter group at once, and sums over every parameter of the optimizer.

Their step size :math:`d` is one number for the whole optimizer: the authors' packages sum
:math:`\langle g, s\rangle` and :math:`\|s\|_1` over *all* groups, then update every group
with the same :math:`d` (and keep it, with its running sums, in every group). A group-scope
rule (``@rule(scope="group")``) sees one group at a time, so these classes override
``step`` and run the two passes over all groups; the rule function is the same algorithm on
one group (what the optimizer does when it has one group).

Sums are Python floats accumulated tensor by tensor (``.item()``), in parameter order, as in
the oracles -- so one process gives their bits. Where a tensor holds only part of the model,
the part's sums are added up across ranks once per step (:class:`Sums`):

* a DTensor parameter (FSDP2, tensor parallelism) is summed over its local shard, then over
  the mesh dimensions it is sharded on (not over replicas);
* with ``fsdp_in_use=True`` (the oracles' flag: FSDP1 flat parameters, or a
  ``ZeroRedundancyOptimizer`` partition -- each rank holds other parameters) plain tensors'
  sums are added up over the default process group.

DDP needs nothing: every rank holds every parameter and the same averaged gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..execution import sharded

__all__ = ["GroupTensors", "Sums", "local", "collect", "open_states", "run_step"]


@dataclass
class GroupTensors:
    """One parameter group's parameters with a gradient, their gradients and their states."""

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any]]


Init = Callable[[Tensor, dict[str, Any]], dict[str, Any]]


def collect(opt: Any) -> list[GroupTensors]:
    """Every group's parameters with a gradient and their gradients (states: :func:`open_states`)."""
    parts = []
    for group in opt.param_groups:
        params, grads = opt._params_with_grad(group)
        parts.append(GroupTensors(group, params, grads, []))
    return parts


def open_states(parts: list[GroupTensors], state: Any, init: Init) -> None:
    """Each parameter's state; a parameter's first step creates it with ``init(param, group)``
    -- where the oracle does, so a step that raises before it creates none."""
    for part in parts:
        part.states = [state.get(p) or init(p, part.group) for p in part.params]


def run_step(opt: Any, closure: Callable[[], Any] | None, algorithm: Callable[..., None], init: Init) -> Any:
    """``opt.step(closure)`` for an optimizer whose step spans all groups:
    ``algorithm(parts, open)`` runs on every group's tensors, ``open()`` creates the states."""
    opt._accelerator_graph_capture_health_check()
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    parts = collect(opt)
    try:
        algorithm(parts, lambda: open_states(parts, opt.state, init))
    finally:  # the states created, also where the step stopped early or raised
        for part in parts:
            opt._store.commit(part.params, part.states)
    return loss


def local(p: Tensor, grad: Tensor, state: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The tensors the elementwise parts of a rule work on: the local shards for a DTensor
    parameter (its gradient and param-shaped state laid out like it), else the tensors."""
    if sharded.is_dtensor(p):
        return sharded.to_local(p, grad, state)
    return p, grad, state


class Sums:
    """Running sums over the optimizer's parameters, started at ``start``.

    ``add(p, values)`` adds one tensor's share. A plain tensor's share is added at once, in
    order (the oracles' Python floats, bit for bit); a DTensor's (computed on its local
    shard) and, with ``all_ranks``, a plain tensor's are kept apart and added up across ranks
    by :meth:`total`, one all-reduce per mesh.
    """

    def __init__(self, *start: float, all_ranks: bool = False) -> None:
        self.plain = list(start)
        self.all_ranks = all_ranks = all_ranks and _world_size() > 1
        self.across: dict[Any, tuple[Any, list[float]]] = {}
        if all_ranks:
            self.across["world"] = (None, [0.0] * len(start))

    def add(self, p: Tensor | None, *values: float) -> None:
        """Add a tensor's share; ``p=None``: a share every rank computed alike (from gathered
        tensors), added once."""
        if p is None:
            acc = self.plain
        elif sharded.is_dtensor(p):
            # Summed over the mesh dimensions that shard p; replicas hold the same values.
            shard_dims = tuple(pl.is_shard() for pl in p.placements)
            key = (id(p.device_mesh), shard_dims)
            acc = self.across.setdefault(key, (p, [0.0] * len(values)))[1]
        elif self.all_ranks:  # this rank's parameters: other ranks hold others
            acc = self.across["world"][1]
        else:
            acc = self.plain
        for i, v in enumerate(values):
            acc[i] += v

    def total(self) -> list[float]:
        """The sums over every parameter on every rank (a collective when some are sharded:
        every rank must call it, in the same order)."""
        out = list(self.plain)
        for key, (p, acc) in self.across.items():
            for i, v in enumerate(_all_reduce(p, acc) if key != "world" else _all_reduce_world(acc)):
                out[i] += v
        return out


def _all_reduce(p: Any, values: list[float]) -> list[float]:
    from torch.distributed.tensor import DTensor, Partial, Replicate

    t = torch.tensor(values, dtype=torch.float64, device=p.to_local().device)
    placements = [Partial() if pl.is_shard() else Replicate() for pl in p.placements]
    return DTensor.from_local(t, p.device_mesh, placements, run_check=False).full_tensor().tolist()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_world(values: list[float]) -> list[float]:
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

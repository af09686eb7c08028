"""How a parameter group's step runs: executors behind one interface.

The optimizer builds a :class:`~.job.Job` (rule, group, parameters with gradients, their
gradients, hyperparameters, state store) and :func:`pick` chooses who runs it:

=================  ==========================================================================
``Fused``          ``fused=True`` and the rule names a torch fused kernel (:mod:`.fused`)
``PerTensor``      ``differentiable=True``, or a rule that needs whole tensors (:mod:`.per_tensor`)
``Gathered``       a whole-tensor rule on DTensor (FSDP2) parameters (:mod:`.per_tensor`)
``WholeGroup``     a rule over the whole group (``scope="group"``: global sums) (:mod:`.per_tensor`)
``Compiled``       ``compile=True`` on an elementwise rule (:mod:`.compiled`)
``Packed``         every other elementwise rule: small tensors packed, big ones chunked, DTensor
                   parameters on their local shards (:mod:`.packed`)
``Encoded``        a group with ``state_encoding`` (8-bit, 4-bit, FP8, bf16 moments) or bf16
                   parameters rounded stochastically / with Kahan compensation: moments decoded
                   a chunk at a time around the same rule (:mod:`.encoded`); its parameters
                   that stay full precision go to the executor above that fits them
=================  ==========================================================================

``Unpacked`` (:mod:`.unpacked`) runs an elementwise rule as ``Packed`` does, but never packs:
the optimizer uses it in ``Packed``'s place for steps of one parameter at a time
(:func:`optimkit.step_in_backward`), which would re-plan a group's packs at every call.

Every executor runs the same rule function; they differ only in how tensors reach it. None
reads an optimizer's attributes: what they need is in the job, and the state in its store.
"""

from __future__ import annotations

from .compiled import Compiled
from .encoded import Encoded, wants
from .fused import Fused
from .job import Executor, Job
from .packed import Packed
from .per_tensor import Gathered, PerTensor, WholeGroup
from .sharded import any_dtensor
from .store import StateStore
from .unpacked import Unpacked

__all__ = [
    "Job", "Executor", "StateStore", "pick", "Packed", "Unpacked", "PerTensor", "Gathered", "WholeGroup", "Fused",
    "Compiled", "Encoded",
]  # fmt: skip

FUSED, PER_TENSOR, GATHERED, PACKED, WHOLE_GROUP = Fused(), PerTensor(), Gathered(), Packed(), WholeGroup()
UNPACKED = Unpacked()


def pick(job: Job, compiled: Compiled | None = None, packed: bool = True) -> Executor:
    """The executor for ``job``; ``compiled`` is the optimizer's (``compile=True``) or None;
    ``packed=False``: ``Unpacked`` where ``Packed`` would run (a step of one parameter)."""
    if job.rule.caps.scope != "group" and wants(job.group):
        return ENCODED if packed else ENCODED_UNPACKED
    return _plain(job, compiled, packed)


def _plain(job: Job, compiled: Compiled | None = None, packed: bool = True) -> Executor:
    caps, group = job.rule.caps, job.group
    if caps.scope == "group":
        return WHOLE_GROUP
    if group.get("fused") and caps.fused:
        return FUSED
    exact = bool(group.get("differentiable"))
    if caps.elementwise and not exact:
        return compiled or (PACKED if packed else UNPACKED)
    if not exact and any_dtensor(job.params):
        return GATHERED
    return PER_TENSOR


ENCODED = Encoded(fallback=_plain)
ENCODED_UNPACKED = Encoded(fallback=lambda job: _plain(job, None, packed=False))

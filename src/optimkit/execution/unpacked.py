"""An elementwise rule on each parameter by itself: :mod:`.packed` without the packs.

:class:`~.packed.Packed` plans a layout per parameter group (which small tensors share a
flat buffer) and re-plans it whenever the set of parameters with gradients changes. A step of
one parameter at a time -- :func:`optimkit.step_in_backward` steps each parameter as soon as
its gradient is ready -- would re-plan at every call. This executor runs every parameter of
the job as ``Packed`` runs the ones it does not pack: big tensors in place in chunks
(``run_one``), DTensor parameters on their local shards, everything else whole. An
elementwise rule gives the same bits on a tensor as on its slice of a pack, so the
parameters and state are bit-identical to a packed step's. A parameter whose state lives in
a pack's buffer (stepped packed before) is updated through its views, in place.
"""

from __future__ import annotations

import functools

from . import sharded
from .job import Job
from .packed import _PLAIN, run_one

__all__ = ["Unpacked"]


class Unpacked:
    """``rule(p, grad, state, **hyper)`` per parameter: big ones chunked, shards local, none packed."""

    def step(self, job: Job) -> None:
        rule, hyper = job.rule, job.hyper
        one = functools.partial(run_one, rule.fn, rule, hyper, rule.caps.chunk_big)
        states = job.states()
        try:
            for p, grad, state in zip(job.params, job.grads, states):
                if type(p) in _PLAIN:
                    one(p, grad, state)
                elif sharded.is_dtensor(p):
                    sharded.step_local(one, p, grad, state)
                else:
                    rule.fn(p, grad, state, **hyper)
        finally:  # a rule raising midway: no parameter moved without its state
            job.store.commit(job.params, states)

"""One rule call per parameter: torch's for-loop. For rules that need a whole tensor (Muon's
orthogonalization, Adafactor's row and column statistics, SparseAdam's sparse rows) and for
``differentiable=True`` steps (autograd records each op). Sharded parameters of such rules are
gathered first (:func:`.sharded.step_gathered`)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import sharded
from .job import Job

__all__ = ["PerTensor", "Gathered", "WholeGroup"]


class PerTensor:
    """``rule(p, grad, state, **hyper)`` for each parameter, in order."""

    def step(self, job: Job) -> None:
        fn, hyper = job.rule.fn, job.hyper
        states = job.states()
        try:
            for p, grad, state in zip(job.params, job.grads, states):
                fn(p, grad, state, **hyper)
        finally:
            # Where a rule raises midway (torch's Adafactor on an empty tensor), the state
            # records what was done, as torch's does: no parameter moved without its state.
            job.store.commit(job.params, states)


class Gathered:
    """A whole-tensor rule on DTensor parameters: each parameter, its gradient and its state
    are all-gathered, the rule runs on the full tensors and every rank keeps its shard."""

    def step(self, job: Job) -> None:
        rule, group, hyper, store = job.rule, job.group, job.hyper, job.store

        def init(full_p: Tensor, full_g: Tensor) -> dict[str, Any]:
            full_p.grad = full_g  # some rules shape their state after the gradient (Adafactor)
            return rule.init_state(full_p, group)

        def run(p: Tensor, g: Tensor, state: dict[str, Any]) -> None:
            rule.fn(p, g, state, **hyper)

        for p, grad in zip(job.params, job.grads):
            state = store.state.get(p) or {}
            if sharded.is_dtensor(p):
                sharded.step_gathered(run, p, grad, state, init)
            else:
                state = state or rule.init_state(p, group)
                run(p, grad, state)
            if state:
                store.state[p] = state


class WholeGroup:
    """A group-scope rule (``scope="group"``): one call with the whole group,
    ``fn(params, grads, states, group, **hyper)``. DTensor parameters reach it as they are, so
    its sums and norms are over the whole tensor on every rank."""

    def step(self, job: Job) -> None:
        states = job.states()
        try:
            job.rule.fn(job.params, job.grads, states, job.group, **job.hyper)
        finally:
            job.store.commit(job.params, states)

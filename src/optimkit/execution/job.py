"""The one interface between an optimizer and the ways its step can run.

An optimizer hands an executor a :class:`Job` -- everything one group's step needs -- and the
executor runs the rule on it. Executors see nothing else of the optimizer: not its class, not
its attributes. The state they read and write is the job's :class:`~.store.StateStore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from ..rule import Rule
from .store import StateStore

__all__ = ["Job", "Executor"]


@dataclass
class Job:
    """One parameter group's step.

    Attributes:
        rule: the update rule (its math, declared state and capabilities).
        group: the parameter group (torch's dict); fused kernels read their arguments here.
        params: the group's parameters that have a gradient, in order.
        grads: their gradients.
        hyper: the rule's keyword arguments, read from the group.
        store: where the state lives (``store.state`` is the optimizer's ``state``).
        grad_scale, found_inf: ``GradScaler``'s unscaling inside a fused kernel.
    """

    rule: Rule
    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    hyper: dict[str, Any]
    store: StateStore
    grad_scale: Tensor | None = None
    found_inf: Tensor | None = None

    def states(self, params: list[Tensor] | None = None) -> list[dict[str, Any]]:
        """The state dicts of ``params`` (default: all), created at a parameter's first step."""
        return self.store.states(self.params if params is None else params, self.group, self.rule)


class Executor(Protocol):
    """Runs a job: ``step(job)`` updates ``job.params`` and their state in place."""

    def step(self, job: Job) -> None: ...

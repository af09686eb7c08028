"""The lab's machinery: registry optimizers with their capabilities handled, 2-D runs, and
the documented learning-rate search.

Every optimizer the lab runs comes from :mod:`optimkit.registry` (never a hard-coded list),
so a newly registered optimizer appears in every section by itself. The registry's
capability flags are honoured here, in one place:

* ``closure`` (L-BFGS): ``step`` always receives a closure. The lab builds such optimizers
  with ``max_iter=1``, ``max_eval=25``, ``line_search_fn="strong_wolfe"`` and
  ``history_size=10`` (when the constructor has those arguments), so one lab step is one
  quasi-Newton iteration with a line search; the closure evaluations it spends are counted
  and reported. ``max_eval`` matters: torch's default ``max_iter * 5 // 4`` is 1 here, which
  leaves the line search no evaluation to spend and it returns a zero step whenever its
  first trial fails. (A history of 10 pairs is SciPy's default; torch's 100 only costs
  time on problems this small.)
* ``sparse == "only"`` (SparseAdam): the dense gradients are converted to sparse COO
  tensors (``grad.to_sparse()``) before each step. Every entry is then present, so the
  optimizer sees the same numbers a dense optimizer would.
* ``matrix_only`` (Muon): the optimizer takes the 2-D parameters; any other parameters
  (biases) go to a companion ``adam`` with its defaults -- the usual recipe. A point of a
  2-D test function is given to it as a ``1 x 2`` matrix. A section may name the matrices
  itself (``matrices=``: the language model gives only its hidden matrices, not the
  embeddings and the output layer, which go to the companion).

Three conventions of optimizers outside torch.optim are honoured by duck typing, so an
optimizer that follows them needs no entry here:

* ``train()`` / ``eval()`` methods (Schedule-Free): :meth:`LabOptimizer.train` and
  :meth:`LabOptimizer.eval` call them; a section calls ``eval()`` before it evaluates the
  model and ``train()`` before it trains again.
* ``first_step`` / ``second_step`` methods (SAM and its relatives, whose ``step(closure)``
  expects the gradient at the current weights to be there already): the gradient is
  computed once before ``step(closure)``; the closure then computes it at the perturbed
  weights. Both evaluations are counted.
* a classmethod ``lab_param_groups(matrices, others, lr)`` (e.g. Muon with an auxiliary
  Adam, whose parameters must come in groups flagged ``use_muon``): it returns the
  parameter groups to build the optimizer from (``matrices``: the 2-D hidden matrices;
  ``others``: every other parameter; ``lr``: the learning rate being tried); the lab then
  passes no ``lr`` of its own.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..registry import OptimizerSpec, create_optimizer, get_spec, names
from .functions import Function2D

__all__ = [
    "CLOSURE_KWARGS",
    "COMPANION",
    "GAP_FLOOR",
    "LabOptimizer",
    "PathRun",
    "lab_names",
    "log_grid",
    "run_path",
    "tune_path",
    "PATH_SEARCH_DOC",
]

#: Extra constructor arguments for optimizers whose ``step`` needs a closure (if accepted).
CLOSURE_KWARGS: dict[str, Any] = {
    "max_iter": 1,
    "max_eval": 25,
    "line_search_fn": "strong_wolfe",
    "history_size": 10,
}
#: The optimizer that takes the parameters a ``matrix_only`` optimizer cannot (biases).
COMPANION = "adam"
#: Gaps ``f(final) - f*`` below this count as equal in the learning-rate search.
GAP_FLOOR = 1e-12
#: Runs are stopped (and called diverged) once a coordinate leaves this box or turns non-finite.
ESCAPE = 1e6

PATH_SEARCH_DOC = (
    "Learning-rate search (the same for every optimizer): each optimizer runs from the fixed "
    "start for the full step budget at every learning rate of a log-spaced grid. The chosen "
    "learning rate is the one whose run ends with the smallest gap f(final) − f*; gaps below "
    f"{GAP_FLOOR:g} count as equal (converged), and ties go to the run that first came within "
    "the distance tolerance of the minimum, then to the smaller learning rate. Runs that "
    "diverge (non-finite values or |x| > 1e6) score +∞."
)


def lab_names(selected: Sequence[str] | None = None) -> list[str]:
    """The optimizers to run: ``selected`` (validated, registry spelling) or the whole registry."""
    if not selected:
        return names()
    return [get_spec(name).name for name in selected]


def _accepts(cls: type, argument: str) -> bool:
    try:
        return argument in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def optimizer_kwargs(spec: OptimizerSpec, lr: float, **kwargs: Any) -> dict[str, Any]:
    """The constructor arguments the lab uses: ``lr``, the closure extras, then ``kwargs``."""
    out: dict[str, Any] = {"lr": lr}
    if spec.closure:
        out.update({k: v for k, v in CLOSURE_KWARGS.items() if _accepts(spec.cls, k)})
    out.update(kwargs)
    return out


class LabOptimizer:
    """One registered optimizer, wrapped so that every capability steps the same way.

    Args:
        name: registry name.
        params: the parameters (tensors).
        lr: the learning rate.
        matrices: the parameters a ``matrix_only`` optimizer (or a ``lab_param_groups`` hook)
            takes as matrices; default: every 2-D parameter.
        **kwargs: further constructor arguments for the named optimizer.

    Optimizers with a training and an evaluation mode (Schedule-Free's ``train()`` /
    ``eval()``) start in training mode; :meth:`eval` and :meth:`train` switch them.

    ``step(loss_and_grad)`` takes a function that computes the loss, fills every ``.grad``
    and returns the loss; it is called once per step (several times for L-BFGS's line
    search). The returned loss is the one at the parameters the step started from.
    """

    def __init__(
        self,
        name: str,
        params: Iterable[torch.Tensor],
        lr: float,
        matrices: Sequence[torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        self.spec = get_spec(name)
        self.params = list(params)
        if matrices is None:
            matrices = [p for p in self.params if p.ndim == 2]
        chosen = {id(p) for p in matrices}
        others = [p for p in self.params if id(p) not in chosen]
        hook = getattr(self.spec.cls, "lab_param_groups", None)
        self.lr = lr
        self.kwargs = optimizer_kwargs(self.spec, lr, **kwargs)
        if callable(hook):
            self.main, rest = self.params, []
            groups = hook(list(matrices), others, lr)
            extra = {k: v for k, v in self.kwargs.items() if k != "lr"}
            self.optimizers = [create_optimizer(self.spec.name, groups, **extra)]
        else:
            self.main, rest = (list(matrices), others) if self.spec.matrix_only else (self.params, [])
            self.optimizers = [create_optimizer(self.spec.name, self.main, **self.kwargs)]
        if rest:
            self.optimizers.append(create_optimizer(COMPANION, rest))
        self.evaluations = 0
        #: SAM's convention (see the module's docstring): ``first_step`` and ``second_step``.
        # optimkit's SAM computes that first gradient in step(closure) itself.
        first = self.optimizers[0]
        self.sam_like = (
            callable(getattr(first, "first_step", None))
            and callable(getattr(first, "second_step", None))
            and not getattr(first, "first_gradient_in_step", False)
        )
        self.train()

    def step(self, loss_and_grad: Callable[[], torch.Tensor]) -> float:
        sparse = self.spec.sparse == "only"
        last: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            for p in self.params:
                p.grad = None
            loss = loss_and_grad()
            self.evaluations += 1
            last[:] = [loss]
            if sparse:
                for p in self.main:
                    if p.grad is not None:
                        p.grad = p.grad.to_sparse()
            return loss

        # The lab's sparse gradients come from to_sparse(), so they are valid: opting out of
        # torch's invariant checks explicitly also silences its warning about them.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            if self.sam_like:  # the gradient at the current weights first, then step(closure)
                loss = closure()
                self.optimizers[0].step(closure)
                for opt in self.optimizers[1:]:
                    opt.step()
            elif self.spec.closure:
                returned = self.optimizers[0].step(closure)
                loss = last[0] if returned is None else returned
                for opt in self.optimizers[1:]:
                    opt.step()
            else:
                loss = closure()
                for opt in self.optimizers:
                    opt.step()
        return float(loss)

    def train(self) -> None:
        """Training mode, for optimizers that have one (Schedule-Free); a no-op for the others."""
        self._mode("train")

    def eval(self) -> None:
        """Evaluation mode (Schedule-Free: the weights become the averaged ones); a no-op for the others."""
        self._mode("eval")

    def _mode(self, mode: str) -> None:
        for opt in self.optimizers:
            switch = getattr(opt, mode, None)
            if callable(switch):
                switch()

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for opt, sd in zip(self.optimizers, state, strict=True):
            opt.load_state_dict(sd)


# ---------------------------------------------------------------- 2-D runs


@dataclass
class PathRun:
    """One optimizer's run on a 2-D function.

    ``points[k]`` and ``values[k]`` are the iterate after ``k`` steps (NaN after a divergence).
    """

    optimizer: str
    function: str
    lr: float
    points: np.ndarray
    values: np.ndarray
    minimum: tuple[float, float]
    f_min: float
    evaluations: int
    diverged: bool
    tol: float = 1e-2
    label: str = field(default="")

    @property
    def steps(self) -> int:
        return len(self.values) - 1

    @property
    def final_gap(self) -> float:
        """``f(final) - f*`` (``inf`` after a divergence)."""
        v = self.values[-1]
        return float(v - self.f_min) if np.isfinite(v) else math.inf

    @property
    def distances(self) -> np.ndarray:
        return np.hypot(self.points[:, 0] - self.minimum[0], self.points[:, 1] - self.minimum[1])

    @property
    def final_distance(self) -> float:
        d = self.distances[-1]
        return float(d) if np.isfinite(d) else math.inf

    @property
    def steps_to_tol(self) -> int | None:
        """The first step after which the iterate is within ``tol`` of the minimum (None: never)."""
        hits = np.flatnonzero(self.distances <= self.tol)
        return int(hits[0]) if hits.size else None

    def score(self) -> tuple[float, float, float]:
        """The search's sort key: smaller is better (see ``PATH_SEARCH_DOC``)."""
        gap = self.final_gap
        gap = math.inf if not math.isfinite(gap) else max(gap, GAP_FLOOR)
        to_tol = self.steps_to_tol
        return gap, math.inf if to_tol is None else float(to_tol), self.lr


def run_path(
    name: str,
    fn: Function2D,
    lr: float,
    steps: int,
    start: tuple[float, float] | None = None,
    tol: float = 1e-2,
    **kwargs: Any,
) -> PathRun:
    """Run optimizer ``name`` on ``fn`` for ``steps`` steps from ``start`` (default ``fn.start``)
    in float64, with the hand-written gradient."""
    spec = get_spec(name)
    shape = (1, 2) if spec.matrix_only else (2,)
    x0 = fn.start if start is None else start
    p = torch.tensor(x0, dtype=torch.float64).reshape(shape).requires_grad_()
    opt = LabOptimizer(spec.name, [p], lr, **kwargs)
    # A NumPy view of the parameter: reading the point costs no tensor operation (a 2-D step
    # is dominated by such overheads). Each gradient is a fresh tensor, as autograd's would be.
    view = p.detach().numpy().reshape(-1)

    def loss_and_grad() -> float:
        x, y = view
        p.grad = torch.from_numpy(np.array(fn.grad(x, y, np), dtype=np.float64)).reshape(shape)
        return float(fn.value(x, y, np))

    points = np.full((steps + 1, 2), np.nan)
    points[0] = x0
    diverged = False
    with np.errstate(all="ignore"):
        for k in range(1, steps + 1):
            opt.step(loss_and_grad)
            x, y = view
            if not (abs(x) < ESCAPE and abs(y) < ESCAPE):  # also catches NaN
                diverged = True
                break
            points[k] = x, y
        values = fn.value(points[:, 0], points[:, 1], np)
    return PathRun(
        spec.name, fn.name, lr, points, values, fn.minimum, fn.f_min, opt.evaluations, diverged, tol
    )


def log_grid(lo: float, hi: float, per_decade: int) -> list[float]:
    """Log-spaced learning rates from ``lo`` to ``hi``, ``per_decade`` per factor of ten,
    rounded to three significant digits (``log_grid(1e-3, 1, 2) == [0.001, 0.00316, 0.01, ...]``)."""
    a, b = math.log10(lo), math.log10(hi)
    n = round((b - a) * per_decade)
    return [float(f"{10 ** (a + i / per_decade):.3g}") for i in range(n + 1)]


def tune_path(
    name: str, fn: Function2D, lrs: Sequence[float], steps: int, tol: float = 1e-2
) -> tuple[PathRun, list[PathRun]]:
    """The learning-rate search of ``PATH_SEARCH_DOC``: ``(best run, every run)``."""
    runs = [run_path(name, fn, lr, steps, tol=tol) for lr in lrs]
    return min(runs, key=PathRun.score), runs

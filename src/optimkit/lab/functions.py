"""Two-dimensional test functions with known minima, written once for NumPy and torch.

Every function takes ``(x, y, xp)`` where ``xp`` is the array module (``numpy`` or
``torch``), so the same formula draws the contour plots (NumPy grids), drives the
optimizers (NumPy scalars: cheap) and is differentiated by autograd in the tests (torch).
The gradients are written out by hand: a 2-D step then costs a few microseconds instead of
an autograd graph, which is what keeps ``optimkit lab --quick`` under a minute. The tests
check every hand-written gradient against autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["Function2D", "FUNCTIONS", "ROSENBROCK", "BEALE", "RASTRIGIN", "WAVY_BOWL", "get_function"]


@dataclass(frozen=True)
class Function2D:
    """A 2-D objective with its known global minimum.

    Attributes:
        name: key used on the command line (``--function rosenbrock``).
        formula: the formula, for captions.
        value: ``value(x, y, xp)``, vectorized over arrays of either module.
        grad: ``grad(x, y, xp) -> (df/dx, df/dy)``.
        minimum: the global minimizer ``(x*, y*)``.
        f_min: ``f(x*, y*)``.
        start: the fixed starting point used by the lab.
        xlim, ylim: the plotted window.
        log_levels: draw contours at logarithmically spaced levels (steep valleys).
    """

    name: str
    formula: str
    value: Callable[..., Any]
    grad: Callable[..., Any]
    minimum: tuple[float, float]
    f_min: float
    start: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log_levels: bool = False

    def __call__(self, x: Any, y: Any, xp: ModuleType = np) -> Any:
        return self.value(x, y, xp)

    def grid(self, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, Y, Z)`` on an ``n`` x ``n`` grid over the plotted window."""
        xs = np.linspace(*self.xlim, n)
        ys = np.linspace(*self.ylim, n)
        X, Y = np.meshgrid(xs, ys)
        return X, Y, self.value(X, Y, np)


# ---------------------------------------------------------------- Rosenbrock


def _rosenbrock(x: Any, y: Any, xp: ModuleType) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(x: Any, y: Any, xp: ModuleType) -> tuple[Any, Any]:
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


ROSENBROCK = Function2D(
    "rosenbrock",
    "f(x, y) = (1 − x)² + 100 (y − x²)²",
    _rosenbrock,
    _rosenbrock_grad,
    minimum=(1.0, 1.0),
    f_min=0.0,
    start=(-1.2, 1.0),
    xlim=(-2.0, 2.0),
    ylim=(-1.5, 3.0),
    log_levels=True,
)

# ---------------------------------------------------------------- Beale


def _beale_terms(x: Any, y: Any) -> tuple[Any, Any, Any]:
    return 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3


def _beale(x: Any, y: Any, xp: ModuleType) -> Any:
    a, b, c = _beale_terms(x, y)
    return a**2 + b**2 + c**2


def _beale_grad(x: Any, y: Any, xp: ModuleType) -> tuple[Any, Any]:
    a, b, c = _beale_terms(x, y)
    dx = 2 * a * (y - 1) + 2 * b * (y**2 - 1) + 2 * c * (y**3 - 1)
    dy = 2 * a * x + 4 * b * x * y + 6 * c * x * y**2
    return dx, dy


BEALE = Function2D(
    "beale",
    "f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²",
    _beale,
    _beale_grad,
    minimum=(3.0, 0.5),
    f_min=0.0,
    start=(1.0, 1.5),
    xlim=(-1.0, 4.7),
    ylim=(-2.2, 2.0),
    log_levels=True,
)

# ---------------------------------------------------------------- Rastrigin

_TWO_PI = 2 * math.pi


def _rastrigin(x: Any, y: Any, xp: ModuleType) -> Any:
    return 20 + x**2 - 10 * xp.cos(_TWO_PI * x) + y**2 - 10 * xp.cos(_TWO_PI * y)


def _rastrigin_grad(x: Any, y: Any, xp: ModuleType) -> tuple[Any, Any]:
    return 2 * x + 10 * _TWO_PI * xp.sin(_TWO_PI * x), 2 * y + 10 * _TWO_PI * xp.sin(_TWO_PI * y)


RASTRIGIN = Function2D(
    "rastrigin",
    "f(x, y) = 20 + x² − 10 cos 2πx + y² − 10 cos 2πy",
    _rastrigin,
    _rastrigin_grad,
    minimum=(0.0, 0.0),
    f_min=0.0,
    start=(2.5, -1.5),
    xlim=(-3.0, 3.0),
    ylim=(-3.0, 3.0),
)

# ---------------------------------------------------------------- part 1's function


def _wavy_bowl(x: Any, y: Any, xp: ModuleType) -> Any:
    return xp.sin(x) * xp.cos(y) + (x**2 + y**2) / 8


def _wavy_bowl_grad(x: Any, y: Any, xp: ModuleType) -> tuple[Any, Any]:
    return xp.cos(x) * xp.cos(y) + x / 4, -xp.sin(x) * xp.sin(y) + y / 4


WAVY_BOWL = Function2D(
    "wavy_bowl",
    "f(x, y) = sin x · cos y + (x² + y²)/8",
    _wavy_bowl,
    _wavy_bowl_grad,
    minimum=(-1.0775, 0.0),  # approximate; not used for optimization
    f_min=float("nan"),
    start=(1.0, 0.8),
    xlim=(-3.5, 3.5),
    ylim=(-3.5, 3.5),
)

#: The functions the optimizers race on (part 4 and ``optimkit lab paths``).
FUNCTIONS: dict[str, Function2D] = {f.name: f for f in (ROSENBROCK, BEALE, RASTRIGIN)}


def get_function(name: str) -> Function2D:
    """The test function called ``name``; a clear error lists the known ones."""
    try:
        return FUNCTIONS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown function {name!r}; known functions: {', '.join(FUNCTIONS)}") from None

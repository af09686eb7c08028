"""Matplotlib helpers: figures without pyplot (no global state, no GUI backend), one colour
per optimizer that stays the same in every figure, and contour plots of the test functions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..registry import names
from .functions import Function2D

__all__ = ["lab_style", "new_figure", "color_of", "style_of", "draw_contours", "grid_shape"]

_RC = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}


def lab_style() -> Any:
    """A context manager with the lab's font sizes; figures are drawn inside it."""
    import matplotlib

    return matplotlib.rc_context(_RC)


def new_figure(width: float, height: float, **subplots: Any) -> tuple[Figure, Any]:
    """A figure of ``width`` x ``height`` inches with ``fig.subplots(**subplots)``,
    laid out by matplotlib's constrained layout (so nothing is clipped)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


#: After tab10's ten colours: dark, mutually distinct ones (drawn dashed, then dotted).
_EXTRA_COLORS = (
    "#393b79", "#637939", "#111111", "#7b4173", "#d6616b",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
)  # fmt: skip


def color_of(name: str) -> Any:
    """A colour per optimizer, fixed by its place in the registry: tab10 for the first ten,
    then :data:`_EXTRA_COLORS` (no pale colours: paths must stand out on the contours)."""
    known = names()
    i = known.index(name) if name in known else len(known) + sum(map(ord, name)) % 7
    if i < 10:
        return colormaps["tab10"](i)
    return _EXTRA_COLORS[(i - 10) % len(_EXTRA_COLORS)]


def style_of(name: str) -> str:
    """Line styles that separate optimizers sharing a hue."""
    known = names()
    i = known.index(name) if name in known else 0
    return ("-", "--", "-.", ":")[(i // 10) % 4]


def grid_shape(n: int, max_cols: int = 5) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def draw_contours(
    ax: Any, fn: Function2D, grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> None:
    """Contour lines of ``fn`` over its window, its minimum (star) and the fixed start (circle)."""
    X, Y, Z = grid if grid is not None else fn.grid()
    if fn.log_levels:
        lo = max(float(Z.min()), 1e-2)
        levels = np.logspace(math.log10(lo), math.log10(float(Z.max())), 18)
        ax.contour(X, Y, Z, levels=levels, norm=LogNorm(), cmap="viridis", linewidths=0.6, alpha=0.55)
    else:
        ax.contour(X, Y, Z, levels=10, cmap="viridis", linewidths=0.6, alpha=0.45)
    ax.plot(*fn.minimum, marker="*", color="crimson", markersize=11, linestyle="none", zorder=5)
    ax.plot(*fn.start, marker="o", color="black", markersize=5, linestyle="none", zorder=5)
    ax.set_xlim(fn.xlim)
    ax.set_ylim(fn.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")

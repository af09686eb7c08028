"""Part 4: the optimizers' paths on Rosenbrock, Beale and Rastrigin.

Every registered optimizer starts from the same fixed point of each function; its learning
rate is chosen by the search documented in :data:`optimkit.lab.engine.PATH_SEARCH_DOC` (a
log grid, best final value). Everything else is the optimizer's torch default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import LabConfig, progress
from .engine import PATH_SEARCH_DOC, PathRun, run_path, tune_path
from .functions import FUNCTIONS, Function2D
from .plotting import color_of, draw_contours, grid_shape, new_figure, style_of
from .report import Report, Section

__all__ = ["TOL", "run", "compare", "paths_figure", "curves_figure"]

TOL = 1e-2  # distance to the minimum that counts as "reached"
GAP_FLOOR_PLOT = 1e-16
GAP_CEIL_PLOT = 1e6


def _label(run: PathRun) -> str:
    return run.label or run.optimizer


def _color(run: PathRun, i: int, by_run: bool) -> Any:
    if by_run:
        from matplotlib import colormaps

        return colormaps["tab10"](i % 10)
    return color_of(run.optimizer)


def paths_figure(fn: Function2D, runs: Sequence[PathRun], by_run: bool = False, title: str = "") -> Any:
    """Small multiples: one contour panel per run with its path."""
    nrows, ncols = grid_shape(len(runs), 5)
    fig, axes = new_figure(3.0 * ncols + 0.3, 2.75 * nrows + 0.5, nrows=nrows, ncols=ncols, squeeze=False)
    grid = fn.grid(160)
    for k, ax in enumerate(axes.flat):
        if k >= len(runs):
            ax.set_axis_off()
            continue
        run = runs[k]
        draw_contours(ax, fn, grid)
        pts = run.points[np.all(np.isfinite(run.points), axis=1)]
        color = _color(run, k, by_run)
        ax.plot(
            pts[:, 0],
            pts[:, 1],
            "-",
            color=color,
            linewidth=1.3,
            marker=".",
            markersize=3,
            markevery=max(1, len(pts) // 60),
        )
        ax.plot(pts[-1, 0], pts[-1, 1], "X", color=color, markeredgecolor="black", markersize=8, zorder=6)
        status = "diverged" if run.diverged else f"dist {run.final_distance:.1e}"
        ax.set_title(f"{_label(run)}  γ={run.lr:g}\n{status}", fontsize=9.5)
        if k % ncols:
            ax.set_ylabel("")
        if k < len(runs) - ncols:
            ax.set_xlabel("")
    if title:
        fig.suptitle(title)
    return fig


def curves_figure(
    fn: Function2D,
    runs: Sequence[PathRun],
    searches: dict[str, list[PathRun]] | None = None,
    by_run: bool = False,
) -> Any:
    """``f − f*`` against the step for every run, and (with ``searches``) the final gap
    against the learning rate for every searched learning rate."""
    ncols = 2 if searches else 1
    fig, axes = new_figure(6.2 * ncols + 2.2, 4.8, ncols=ncols, squeeze=False)
    ax = axes[0, 0]
    for k, run in enumerate(runs):
        gap = np.clip(run.values - run.f_min, GAP_FLOOR_PLOT, None)
        ax.semilogy(gap, color=_color(run, k, by_run), linestyle=style_of(run.optimizer) if not by_run else "-",
                    linewidth=1.3, label=f"{_label(run)} (γ={run.lr:g})")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel(f"f − f* (log scale, floor {GAP_FLOOR_PLOT:g})")
    ax.set_title(f"{fn.name}: progress at the chosen learning rates" if searches else f"{fn.name}: progress")
    if searches:
        ax2 = axes[0, 1]
        for name, sruns in searches.items():
            lrs = np.array([r.lr for r in sruns])
            gaps = np.array([min(max(r.final_gap, GAP_FLOOR_PLOT), GAP_CEIL_PLOT) for r in sruns])
            color = color_of(name)
            ax2.loglog(
                lrs, gaps, marker="o", markersize=3.5, color=color, linestyle=style_of(name), linewidth=1
            )
            best = min(sruns, key=PathRun.score)
            ax2.plot([best.lr], [min(max(best.final_gap, GAP_FLOOR_PLOT), GAP_CEIL_PLOT)], "o", markersize=9,
                     markerfacecolor="none", markeredgecolor=color, markeredgewidth=1.6)  # fmt: skip
        ax2.plot([], [], "o", markersize=9, markerfacecolor="none", markeredgecolor="0.3", label="chosen")
        ax2.set_xlabel("learning rate γ (log scale)")
        ax2.set_ylabel(f"final f − f* (diverged drawn at {GAP_CEIL_PLOT:g})")
        ax2.set_title("The learning-rate search: final gap per learning rate")
        ax2.legend(loc="lower left")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8.5)
    return fig


def _table_rows(runs: Sequence[PathRun]) -> list[list[Any]]:
    return [
        [_label(r), r.lr, r.final_gap, r.final_distance, r.steps_to_tol, r.evaluations, r.diverged]
        for r in runs
    ]


_COLUMNS = ["optimizer", "learning rate γ", "final f − f*", "final distance to minimum",
            f"steps to distance ≤ {TOL:g}", "gradient evaluations", "diverged"]  # fmt: skip


def _paths_csv(section: Section, name: str, runs: Sequence[PathRun]) -> str:
    return section.csv(
        name,
        ["optimizer", "lr", "step", "x", "y", "f"],
        (
            [_label(r), r.lr, k, float(r.points[k, 0]), float(r.points[k, 1]), float(r.values[k])]
            for r in runs
            for k in range(len(r.values))
        ),
    )


def _run_summary(run: PathRun) -> dict[str, Any]:
    return {
        "lr": run.lr,
        "final_gap": run.final_gap,
        "final_distance": run.final_distance,
        "final_point": run.points[-1].tolist(),
        "steps_to_tol": run.steps_to_tol,
        "evaluations": run.evaluations,
        "diverged": run.diverged,
    }


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("paths", "4. The optimizers' paths")
    names = cfg.names
    steps, grid = cfg.path_steps, cfg.path_grid
    s.text(
        f"Every optimizer in optimkit's registry ({len(names)}: {', '.join(names)}) starts from the same "
        f"fixed point of each function (black dot; the red star is the global minimum) and takes {steps} "
        "steps in float64, with its torch defaults except the learning rate. "
        + PATH_SEARCH_DOC.replace("<", "&lt;")
        + f" The grid here: {', '.join(f'{g:g}' for g in grid)} ({len(grid)} values). "
        "L-BFGS takes one iteration per step (<code>max_iter=1, max_eval=25, history_size=10</code>) with a "
        "strong-Wolfe line search, so it "
        "spends more than one gradient evaluation per step (see the table); SparseAdam receives the "
        "gradients as sparse tensors; Muon optimizes the point as a 1 × 2 matrix (it only takes matrices), "
        "where its orthogonalized update is (approximately) the normalized momentum direction."
    )
    summary: dict[str, Any] = {"steps": steps, "grid": grid, "tol": TOL, "functions": {}}
    jobs = [(fn, name) for fn in FUNCTIONS.values() for name in names]
    results: dict[str, dict[str, tuple[PathRun, list[PathRun]]]] = {f: {} for f in FUNCTIONS}
    for fn, name in progress(jobs, "paths (lr search)", cfg.progress):
        results[fn.name][name] = tune_path(name, fn, grid, steps, tol=TOL)

    for fn in FUNCTIONS.values():
        res = results[fn.name]
        best = [res[n][0] for n in names]
        searches = {n: res[n][1] for n in names}
        path_csv = _paths_csv(s, f"paths_{fn.name}", best)
        search_csv = s.csv(
            f"search_{fn.name}",
            ["optimizer", "lr", "final_gap", "final_distance", "steps_to_tol", "evaluations", "diverged", "chosen"],
            (
                [r.optimizer, r.lr, r.final_gap, r.final_distance, r.steps_to_tol, r.evaluations, r.diverged,
                 r is res[r.optimizer][0]]
                for n in names for r in searches[n]
            ),
        )  # fmt: skip
        summary["functions"][fn.name] = {
            "formula": fn.formula, "minimum": list(fn.minimum), "start": list(fn.start),
            "optimizers": {r.optimizer: _run_summary(r) for r in best},
        }  # fmt: skip
        ranked = sorted(best, key=lambda r: (r.final_distance, r.optimizer))
        s.text(
            f"<b>{fn.name.capitalize()}</b>: <code>{fn.formula}</code>, minimum {fn.minimum}, start {fn.start}. "
            f"Closest at the end: {', '.join(f'{r.optimizer} ({r.final_distance:.1e})' for r in ranked[:3])}; "
            f"{sum(r.steps_to_tol is not None for r in best)} of {len(best)} optimizers came within {TOL:g} of the "
            "minimum."
        )
        s.figure(
            paths_figure(fn, best),
            f"paths_{fn.name}",
            f"{fn.name}: each optimizer's path at its searched learning rate ({steps} steps; dots every "
            f"{max(1, (steps + 1) // 60)} steps, the X marks the end; a path may leave the window).",
            data=[path_csv],
        )
        s.figure(
            curves_figure(fn, best, searches),
            f"curves_{fn.name}",
            f"{fn.name}: left, f − f* against the step at the chosen learning rates; right, the search — the "
            "final gap for every learning rate of the grid, the chosen one circled.",
            data=[search_csv],
        )
        s.table(_COLUMNS, _table_rows(best), caption=f"{fn.name}: the runs at the chosen learning rates.")
    s.json("paths", summary)
    s.summary.update(summary)


def compare(
    report: Report,
    fn: Function2D,
    names: Sequence[str],
    lrs: Sequence[float] | None,
    steps: int,
    start: tuple[float, float] | None = None,
    grid: Sequence[float] | None = None,
    show_progress: bool = True,
) -> list[PathRun]:
    """``optimkit lab paths``: every optimizer at every learning rate of ``lrs`` (or, with no
    ``lrs``, at the learning rate chosen by the search over ``grid``), on ``fn``."""
    s = report.section(f"paths-{fn.name}", f"Paths on {fn.name}")
    if start is not None:
        import dataclasses

        fn = dataclasses.replace(fn, start=tuple(start))
    runs: list[PathRun] = []
    searches: dict[str, list[PathRun]] = {}
    if lrs:
        jobs = [(n, lr) for n in names for lr in lrs]
        for name, lr in progress(jobs, f"paths on {fn.name}", show_progress):
            r = run_path(name, fn, lr, steps, tol=TOL)
            r.label = f"{r.optimizer}" if len(lrs) == 1 else f"{r.optimizer} γ={lr:g}"
            runs.append(r)
        how = "learning rates given on the command line"
    else:
        for name in progress(names, f"paths on {fn.name} (lr search)", show_progress):
            best, sruns = tune_path(name, fn, grid or [], steps, tol=TOL)
            runs.append(best)
            searches[name] = sruns
        how = PATH_SEARCH_DOC + f" Grid: {', '.join(f'{g:g}' for g in grid or [])}."
    s.text(
        f"<code>{fn.formula}</code>, minimum {fn.minimum}, start {fn.start}, {steps} steps in float64 "
        f"({how.replace('<', '&lt;')})"
    )
    by_run = bool(lrs) and len(lrs) > 1
    path_csv = _paths_csv(s, f"paths_{fn.name}", runs)
    s.figure(paths_figure(fn, runs, by_run=by_run), f"paths_{fn.name}", f"{fn.name}: paths.", data=[path_csv])
    s.figure(
        curves_figure(fn, runs, searches or None, by_run=by_run),
        f"curves_{fn.name}",
        f"{fn.name}: f − f* per step.",
    )
    s.table(_COLUMNS, _table_rows(runs), caption=f"{fn.name}: the runs.")
    s.json(
        f"paths_{fn.name}",
        {_label(r) + (f" lr={r.lr:g}" if not by_run else ""): _run_summary(r) for r in runs},
    )
    return runs

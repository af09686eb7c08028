"""Part 2: the learning rate, on ``f(x) = 4x²``.

Gradient descent with learning rate ``γ`` maps ``x`` to ``x − γ·8x = (1 − 8γ)x``. So it
converges monotonically for ``0 < γ < 1/8``, lands on the minimum in one step at ``γ = 1/8``,
converges while oscillating for ``1/8 < γ < 2/8``, bounces between ``±x0`` forever at
``γ = 2/8`` and diverges for ``γ > 2/8 = 0.25`` (the classic ``γ < 2/L`` with ``L = f'' = 8``).
Every run below is optimkit's SGD driven by autograd, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..registry import create_optimizer
from .config import LabConfig
from .plotting import new_figure
from .report import Report

__all__ = ["CURVATURE", "THRESHOLD", "gd_quadratic", "classify", "run"]

CURVATURE = 8.0  # f''(x) for f(x) = 4x^2
THRESHOLD = 2 / CURVATURE  # 0.25
X0 = 1.0
SHOWN_LRS = (0.05, 0.125, 0.2, 0.25, 0.26, 0.3)
SCAN_STEPS = 50


def gd_quadratic(lr: float, steps: int, x0: float = X0) -> np.ndarray:
    """The iterates ``x_0 .. x_steps`` of optimkit SGD on ``4x²`` (autograd gradients)."""
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    opt = create_optimizer("sgd", [x], lr=lr)
    xs = [x0]
    for _ in range(steps):
        opt.zero_grad()
        (4 * x**2).sum().backward()
        opt.step()
        xs.append(float(x.detach()))
    return np.array(xs)


def classify(lr: float) -> str:
    """What theory predicts for learning rate ``lr`` on ``4x²``."""
    factor = 1 - CURVATURE * lr
    if factor == 0:
        return "one step"
    if 0 < factor < 1:
        return "converges"
    if -1 < factor < 0:
        return "converges, oscillating"
    if factor == -1:
        return "oscillates forever"
    return "diverges"


def run(report: Report, cfg: LabConfig, lrs: Sequence[float] = SHOWN_LRS, steps: int = 20) -> None:
    s = report.section("learning-rate", "2. The learning rate: gradient descent on y = 4x²")
    runs = {lr: gd_quadratic(lr, steps) for lr in lrs}
    scan = [k / 400 for k in range(1, 141)]  # 0.0025 .. 0.35; k = 100 is exactly 0.25
    scan_rows = []
    for lr in scan:
        xs = gd_quadratic(lr, SCAN_STEPS)
        growth = abs(xs[-1]) / abs(xs[0])
        scan_rows.append(
            {
                "lr": lr,
                "factor_measured": abs(xs[1] / xs[0]),
                "factor_theory": abs(1 - CURVATURE * lr),
                "abs_x_final": abs(xs[-1]),
                "growth": growth,
                "diverged": bool(growth > 1),
            }
        )
    diverging = [r["lr"] for r in scan_rows if r["diverged"]]
    stable = [r["lr"] for r in scan_rows if not r["diverged"]]
    result = {
        "threshold_theory": THRESHOLD,
        "x0": X0,
        "scan_steps": SCAN_STEPS,
        "largest_non_diverging_lr": max(stable),
        "smallest_diverging_lr": min(diverging),
        "diverges_exactly_above_threshold": all(r["diverged"] == (r["lr"] > THRESHOLD) for r in scan_rows),
        "runs": {str(lr): {"behaviour": classify(lr), "x": runs[lr].tolist()} for lr in lrs},
    }
    s.summary.update({k: v for k, v in result.items() if k != "runs"})
    runs_csv = s.csv(
        "lr_runs", ["step", *[f"x_lr={lr:g}" for lr in lrs]],
        ([k, *[float(runs[lr][k]) for lr in lrs]] for k in range(steps + 1)),
    )  # fmt: skip
    scan_csv = s.csv("lr_scan", list(scan_rows[0]), ([*r.values()] for r in scan_rows))
    res_json = s.json("learning_rate", result)

    s.text(
        "Gradient descent on f(x) = 4x² from x<sub>0</sub> = 1 maps x to x − γ·f′(x) = (1 − 8γ)x. "
        "The factor 1 − 8γ decides everything: for γ &lt; 1/8 the iterates shrink monotonically, at "
        "γ = 1/8 they land on the minimum in one step, for 1/8 &lt; γ &lt; 2/8 they shrink while "
        "changing sign (oscillating), at γ = 2/8 they bounce between ±1 forever and for "
        "γ &gt; 2/8 = 0.25 they diverge: the threshold is γ &lt; 2/L where L = f″ = 8 is the curvature."
    )
    s.text(
        f"Measured with optimkit's SGD over a scan of {len(scan)} learning rates ({scan[0]:g} … {scan[-1]:g}, "
        f"{SCAN_STEPS} steps each): the largest learning rate that does not diverge is "
        f"{result['largest_non_diverging_lr']:g} and the smallest that does is {result['smallest_diverging_lr']:g}; "
        f"the per-step factor |x<sub>1</sub>/x<sub>0</sub>| equals |1 − 8γ| for every γ. "
        + (
            "Divergence starts exactly above 0.25, as predicted."
            if result["diverges_exactly_above_threshold"]
            else ""
        )
    )

    fig, (ax0, ax1, ax2) = new_figure(15, 4.8, ncols=3)
    cmap = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b"]
    for i, lr in enumerate(lrs):
        ax0.plot(
            runs[lr], marker="o", markersize=3, color=cmap[i % len(cmap)], label=f"γ = {lr:g}: {classify(lr)}"
        )
    ax0.set_yscale("symlog", linthresh=1e-2)
    ax0.axhline(0, color="0.5", linewidth=0.7)
    ax0.set_xlabel("step k")
    ax0.set_ylabel("iterate x_k (symmetric log scale)")
    ax0.set_title("Iterates of gradient descent on 4x²")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)

    grid = np.linspace(-2.2, 2.2, 200)
    ax1.plot(grid, 4 * grid**2, color="0.6", linewidth=1, label="f(x) = 4x²")
    for lr, color in ((0.05, cmap[0]), (0.2, cmap[2]), (0.26, cmap[4])):
        xs = runs.get(lr, gd_quadratic(lr, steps))[:8]
        ax1.plot(
            xs,
            4 * xs**2,
            marker="o",
            markersize=4,
            color=color,
            linewidth=1,
            label=f"γ = {lr:g}: {classify(lr)}",
        )
    ax1.set_ylim(-0.5, 20)
    ax1.set_xlabel("x")
    ax1.set_ylabel("f(x)")
    ax1.set_title("The first 8 iterates on the parabola")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)

    lr_arr = np.array(scan)
    ax2.plot(lr_arr, np.abs(1 - CURVATURE * lr_arr), color="0.3", linewidth=1.2, label="theory |1 − 8γ|")
    measured = np.array([r["factor_measured"] for r in scan_rows])
    div = np.array([r["diverged"] for r in scan_rows])
    ax2.plot(lr_arr[~div], measured[~div], ".", color="C0", label=f"measured, converges ({SCAN_STEPS} steps)")
    ax2.plot(lr_arr[div], measured[div], ".", color="C3", label="measured, diverges")
    ax2.axhline(1, color="0.6", linewidth=0.7, linestyle=":")
    ax2.axvline(THRESHOLD, color="C3", linestyle="--", linewidth=1, label="threshold γ = 2/8 = 0.25")
    ax2.axvline(1 / CURVATURE, color="C2", linestyle=":", linewidth=1, label="γ = 1/8: one step")
    ax2.set_xlabel("learning rate γ")
    ax2.set_ylabel("per-step factor |x_{k+1} / x_k|")
    ax2.set_title("Contraction per step: above 1 means divergence")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
    s.figure(
        fig,
        "learning_rate",
        "Gradient descent on y = 4x² for several learning rates. Left: the iterates (converging, "
        "oscillating, diverging). Middle: the same runs drawn on the function. Right: the measured "
        "factor |x₁/x₀| for a scan of learning rates against the theory |1 − 8γ|; divergence starts "
        "exactly at the analytic threshold 2/8.",
        data=[runs_csv, scan_csv, res_json],
    )
    s.table(
        ["learning rate γ", "1 − 8γ", "theory", f"|x_{steps}|"],
        ([lr, 1 - CURVATURE * lr, classify(lr), abs(float(runs[lr][-1]))] for lr in lrs),
        caption=f"The runs in the figure, {steps} steps from x₀ = 1.",
    )

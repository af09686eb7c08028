"""Part 3: momentum.

SGD with momentum keeps a buffer ``b ← β b + g`` and steps along it, so the step taken ``i``
steps after a gradient still carries ``β^i`` of it: the weights ``β^i`` sum to ``1/(1 − β)``
(the effective memory: 2, 10 and 100 steps for β = 0.5, 0.9, 0.99). The lab *measures*
those weights from optimkit's SGD (one unit gradient, then zeros: the parameter moves by
``γ β^i`` at step ``i``), then races SGD against SGD with momentum on ``4x²`` and on an
ill-conditioned valley.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..registry import create_optimizer
from .config import LabConfig
from .plotting import new_figure
from .report import Report

__all__ = ["BETAS", "measured_weights", "descend", "run"]

BETAS = (0.5, 0.9, 0.99)
N_WEIGHTS = 200
QUADRATIC_LR = 0.002
QUADRATIC_STEPS = 120
VALLEY = (1.0, 25.0)  # f(x, y) = (a x² + b y²) / 2: curvatures 1 and 25, condition number 25
VALLEY_START = (-8.0, 1.5)
VALLEY_LR = 0.02
VALLEY_STEPS = 150
MOMENTUM = 0.9


def measured_weights(beta: float, n: int = N_WEIGHTS, lr: float = 0.5) -> np.ndarray:
    """The weight of a gradient ``i`` steps later, read off optimkit's SGD: a unit gradient at
    step 0, zero gradients after, and ``-(θ_{i+1} − θ_i)/γ`` is ``β^i``."""
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = create_optimizer("sgd", [p], lr=lr, momentum=beta)
    out = []
    for i in range(n):
        before = float(p.detach())
        p.grad = torch.ones(1, dtype=torch.float64) if i == 0 else torch.zeros(1, dtype=torch.float64)
        opt.step()
        out.append(-(float(p.detach()) - before) / lr)
    return np.array(out)


def descend(
    f: Callable[[torch.Tensor], torch.Tensor],
    start: tuple[float, ...],
    lr: float,
    steps: int,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """optimkit SGD (autograd gradients, float64): ``(points, values)`` after each step."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = create_optimizer("sgd", [p], lr=lr, momentum=momentum)
    points, values = [p.detach().clone().numpy()], []
    for _ in range(steps):
        opt.zero_grad()
        loss = f(p)
        loss.backward()
        values.append(float(loss.detach()))
        opt.step()
        points.append(p.detach().clone().numpy())
    values.append(float(f(p).detach()))
    return np.array(points), np.array(values)


def _quadratic(p: torch.Tensor) -> torch.Tensor:
    return 4 * (p**2).sum()


def _valley(p: torch.Tensor) -> torch.Tensor:
    return (VALLEY[0] * p[0] ** 2 + VALLEY[1] * p[1] ** 2) / 2


def _first_below(values: np.ndarray, level: float) -> int | None:
    hits = np.flatnonzero(values <= level)
    return int(hits[0]) if hits.size else None


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("momentum", "3. Momentum")
    weights = {beta: measured_weights(beta) for beta in BETAS}
    i = np.arange(N_WEIGHTS)
    weight_rows = {
        str(beta): {
            "max_abs_error_vs_beta_pow_i": float(np.max(np.abs(weights[beta] - beta**i))),
            "sum_measured": float(weights[beta].sum()),
            "sum_theory_truncated": (1 - beta**N_WEIGHTS) / (1 - beta),
            "effective_memory": 1 / (1 - beta),
        }
        for beta in BETAS
    }
    quad = {m: descend(_quadratic, (1.0,), QUADRATIC_LR, QUADRATIC_STEPS, m) for m in (0.0, MOMENTUM)}
    valley = {m: descend(_valley, VALLEY_START, VALLEY_LR, VALLEY_STEPS, m) for m in (0.0, MOMENTUM)}
    level = 1e-6

    def stats(runs: dict[float, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float | int | None]]:
        return {
            ("sgd" if m == 0 else f"sgd_momentum_{m:g}"): {
                "final_loss": float(v[-1]),
                f"steps_to_loss_{level:g}": _first_below(v, level),
            }
            for m, (_, v) in runs.items()
        }

    result = {
        "weights": weight_rows,
        "quadratic": {"lr": QUADRATIC_LR, "steps": QUADRATIC_STEPS, **stats(quad)},
        "valley": {
            "curvatures": list(VALLEY), "start": list(VALLEY_START), "lr": VALLEY_LR, "steps": VALLEY_STEPS,
            **stats(valley),
        },
    }  # fmt: skip
    s.summary.update(result)
    w_csv = s.csv(
        "momentum_weights",
        ["i", *[f"measured_beta={b:g}" for b in BETAS], *[f"theory_beta={b:g}" for b in BETAS]],
        ([int(k), *[float(weights[b][k]) for b in BETAS], *[b**k for b in BETAS]] for k in i),
    )
    columns: dict[str, np.ndarray] = {}
    for m, tag in ((0.0, "sgd"), (MOMENTUM, "momentum")):
        columns[f"quad_{tag}_x"] = quad[m][0][:, 0]
        columns[f"quad_{tag}_loss"] = quad[m][1]
        columns[f"valley_{tag}_x"] = valley[m][0][:, 0]
        columns[f"valley_{tag}_y"] = valley[m][0][:, 1]
        columns[f"valley_{tag}_loss"] = valley[m][1]
    n_rows = max(len(c) for c in columns.values())
    r_csv = s.csv(
        "momentum_runs",
        ["step", *columns],
        ([k, *(float(c[k]) if k < len(c) else "" for c in columns.values())] for k in range(n_rows)),
    )
    j = s.json("momentum", result)

    s.text(
        "SGD with momentum keeps a running buffer b ← βb + g and steps along it: θ ← θ − γb. Unrolled, the "
        "step at time t is γ Σ<sub>i</sub> β<sup>i</sup> g<sub>t−i</sub>: a gradient seen i steps ago still "
        "counts with weight β<sup>i</sup>, and the weights add up to 1/(1 − β) — a memory of about 2, 10 and "
        "100 steps for β = 0.5, 0.9 and 0.99. The weights below are <em>measured</em> from optimkit's SGD "
        "(one unit gradient, then zeros: the parameter moves by γβ<sup>i</sup> at step i); they match "
        "β<sup>i</sup> to "
        f"{max(r['max_abs_error_vs_beta_pow_i'] for r in weight_rows.values()):.1e}."
    )
    qs, qm = result["quadratic"]["sgd"], result["quadratic"][f"sgd_momentum_{MOMENTUM:g}"]
    vs, vm = result["valley"]["sgd"], result["valley"][f"sgd_momentum_{MOMENTUM:g}"]
    s.text(
        f"On 4x² with a small learning rate γ = {QUADRATIC_LR:g}, plain SGD shrinks x by 1 − 8γ = "
        f"{1 - 8 * QUADRATIC_LR:g} per step; with momentum β = {MOMENTUM:g} the iterates overshoot and "
        f"oscillate but contract by about √β ≈ {MOMENTUM**0.5:.3f} per step: after {QUADRATIC_STEPS} steps the "
        f"loss is {qs['final_loss']:.2e} without and {qm['final_loss']:.2e} with momentum. On the valley "
        f"f(x, y) = (x² + 25y²)/2 (condition number 25) the learning rate is limited by the steep y "
        f"direction, so plain SGD crawls along the flat x direction; momentum accumulates the consistent "
        f"x gradients. Loss after {VALLEY_STEPS} steps at γ = {VALLEY_LR:g}: SGD {vs['final_loss']:.2e}, "
        f"momentum {vm['final_loss']:.2e}."
    )

    fig, axes = new_figure(15, 8.6, nrows=2, ncols=2)
    ax = axes[0, 0]
    colors = {0.5: "C0", 0.9: "C1", 0.99: "C2"}
    for beta in BETAS:
        ax.plot(
            i,
            beta**i,
            color=colors[beta],
            linewidth=1.2,
            label=f"β = {beta:g}: β^i (sum = {1 / (1 - beta):g})",
        )
        ax.plot(i[::6], weights[beta][::6], "o", color=colors[beta], markersize=3.5, markerfacecolor="none")
    ax.plot([], [], "o", color="0.3", markerfacecolor="none", label="measured from optimkit SGD")
    ax.set_xlabel("steps ago, i")
    ax.set_ylabel("weight of the gradient, β^i")
    ax.set_title("How much a past gradient counts")
    ax.legend(loc="upper right")

    ax = axes[0, 1]
    for m, color, label in ((0.0, "C0", "SGD"), (MOMENTUM, "C3", f"SGD + momentum {MOMENTUM:g}")):
        ax.semilogy(quad[m][1], color=color, label=f"{label} (γ = {QUADRATIC_LR:g})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss f(x) = 4x² (log scale)")
    ax.set_title("Same function as part 2, small learning rate")
    ax.legend(loc="lower left")

    ax = axes[1, 0]
    xs = np.linspace(-9, 3, 300)
    ys = np.linspace(-2, 2, 200)
    X, Y = np.meshgrid(xs, ys)
    Z = (VALLEY[0] * X**2 + VALLEY[1] * Y**2) / 2
    ax.contour(X, Y, Z, levels=np.geomspace(0.05, 60, 14), cmap="viridis", linewidths=0.6)
    for m, color, label in ((0.0, "C0", "SGD"), (MOMENTUM, "C3", f"SGD + momentum {MOMENTUM:g}")):
        pts = valley[m][0]
        ax.plot(pts[:, 0], pts[:, 1], "-o", color=color, markersize=2, linewidth=0.9, label=label)
    ax.plot(0, 0, "*", color="crimson", markersize=11)
    ax.plot(*VALLEY_START, "o", color="black", markersize=5)
    ax.set_xlim(-9, 3)
    ax.set_ylim(-2, 2)
    ax.set_xlabel("x (flat direction, curvature 1)")
    ax.set_ylabel("y (steep, curvature 25)")
    ax.set_title(f"Ill-conditioned valley, {VALLEY_STEPS} steps at γ = {VALLEY_LR:g}")
    ax.legend(loc="lower right")

    ax = axes[1, 1]
    for m, color, label in ((0.0, "C0", "SGD"), (MOMENTUM, "C3", f"SGD + momentum {MOMENTUM:g}")):
        ax.semilogy(valley[m][1], color=color, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("Loss on the valley")
    ax.legend(loc="lower left")
    s.figure(
        fig,
        "momentum",
        "Top left: the weights β^i that momentum gives past gradients (lines: theory; circles: measured "
        "from optimkit's SGD). Top right: SGD against SGD with momentum on 4x². Bottom: the same on an "
        "ill-conditioned valley, paths and losses.",
        data=[w_csv, r_csv, j],
    )

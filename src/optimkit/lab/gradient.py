"""Part 1: the gradient and the directional derivative.

At a point ``p`` of a 2-D function, the directional derivative along a unit vector
``u = (cos θ, sin θ)`` is ``D_u f(p) = ∇f(p) · u = |∇f(p)| cos(θ − θ*)``, where ``θ*`` is the
gradient's angle: it is largest, and equal to ``|∇f(p)|``, along the gradient. The lab computes
it for every direction three independent ways -- reverse mode (autograd, then a dot
product), forward mode (``torch.func.jvp``) and central finite differences -- in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.func import jvp, vmap

from .config import LabConfig
from .functions import WAVY_BOWL, Function2D
from .plotting import new_figure
from .report import Report

__all__ = ["directional_derivatives", "run"]

POINT = (1.0, 0.8)
N_DIRECTIONS = 720
FD_STEP = 1e-5


def directional_derivatives(
    fn: Function2D, point: tuple[float, float], thetas: np.ndarray, h: float = FD_STEP
) -> dict[str, Any]:
    """``D_u f(point)`` for ``u = (cos θ, sin θ)`` by autograd, jvp and central differences."""

    def f(v: torch.Tensor) -> torch.Tensor:  # v: (..., 2)
        return fn.value(v[..., 0], v[..., 1], torch)

    p = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    f(p).backward()
    grad = p.grad.detach()
    U = torch.tensor(np.stack([np.cos(thetas), np.sin(thetas)], axis=1), dtype=torch.float64)
    autograd = U @ grad
    p0 = p.detach()
    forward = vmap(lambda u: jvp(f, (p0,), (u,))[1])(U)
    with torch.no_grad():
        fd = (f(p0 + h * U) - f(p0 - h * U)) / (2 * h)
    g_unit = grad / grad.norm()
    along = {
        "autograd": float(g_unit @ grad),
        "jvp": float(jvp(f, (p0,), (g_unit,))[1]),
        "finite_differences": float((f(p0 + h * g_unit) - f(p0 - h * g_unit)) / (2 * h)),
    }
    return {
        "grad": grad.numpy(),
        "autograd": autograd.numpy(),
        "jvp": forward.numpy(),
        "finite_differences": fd.numpy(),
        "along_gradient": along,
    }


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("gradient", "1. Gradient and directional derivative")
    fn = WAVY_BOWL
    thetas = np.arange(N_DIRECTIONS) * (2 * math.pi / N_DIRECTIONS)
    d = directional_derivatives(fn, POINT, thetas)
    gx, gy = (float(v) for v in d["grad"])
    gnorm = math.hypot(gx, gy)
    gangle = math.atan2(gy, gx) % (2 * math.pi)
    methods = ("autograd", "jvp", "finite_differences")
    argmax = {m: float(thetas[int(np.argmax(d[m]))]) for m in methods}
    result = {
        "function": fn.formula,
        "point": list(POINT),
        "grad": [gx, gy],
        "grad_norm": gnorm,
        "grad_angle_deg": math.degrees(gangle),
        "n_directions": N_DIRECTIONS,
        "fd_step": FD_STEP,
        "max_over_directions": {m: float(np.max(d[m])) for m in methods},
        "argmax_angle_deg": {m: math.degrees(a) for m in methods for a in [argmax[m]]},
        "along_gradient": d["along_gradient"],
        "max_abs_diff_autograd_jvp": float(np.max(np.abs(d["autograd"] - d["jvp"]))),
        "max_abs_diff_autograd_fd": float(np.max(np.abs(d["autograd"] - d["finite_differences"]))),
    }
    s.summary.update(result)
    csv_path = s.csv(
        "gradient_directional",
        ["theta_rad", "theta_deg", "ux", "uy", "autograd", "jvp", "finite_differences"],
        (
            [float(t), math.degrees(t), math.cos(t), math.sin(t), float(a), float(j), float(f)]
            for t, a, j, f in zip(thetas, d["autograd"], d["jvp"], d["finite_differences"])
        ),
    )
    json_path = s.json("gradient", result)

    s.text(
        f"The function is <code>{fn.formula}</code>. At the point p = {POINT} its gradient is "
        f"∇f(p) = ({gx:.4f}, {gy:.4f}), of length |∇f(p)| = {gnorm:.6f}. The directional derivative "
        "along a unit vector u = (cos θ, sin θ) is D<sub>u</sub>f(p) = ∇f(p)·u = |∇f(p)| cos(θ − θ*): "
        "it is largest along the gradient, where it equals the gradient's length, zero along the "
        "level curve and most negative against the gradient (the direction gradient descent takes)."
    )
    s.text(
        f"It is computed for {N_DIRECTIONS} directions three independent ways: reverse mode "
        "(<code>backward()</code> gives ∇f once, then a dot product per direction), forward mode "
        "(<code>torch.func.jvp(f, (p,), (u,))</code>, one Jacobian-vector product per direction) and "
        f"central finite differences (f(p + hu) − f(p − hu))/2h with h = {FD_STEP:g}. "
        f"Largest disagreement: autograd vs jvp {result['max_abs_diff_autograd_jvp']:.1e}, "
        f"autograd vs finite differences {result['max_abs_diff_autograd_fd']:.1e}. The maximum over the "
        f"directions is {result['max_over_directions']['jvp']:.6f} at θ = "
        f"{result['argmax_angle_deg']['jvp']:.1f}° (the gradient points at θ* = {math.degrees(gangle):.1f}°); "
        f"exactly along the gradient, jvp gives {d['along_gradient']['jvp']:.12f} = |∇f(p)|."
    )

    # ---------------------------------------------------------------- figure
    fig, (ax0, ax1, ax2) = new_figure(15, 5.4, ncols=3, width_ratios=[1.05, 1.2, 1.0])
    X, Y, Z = fn.grid(200)
    cs = ax0.contour(X, Y, Z, levels=16, cmap="viridis", linewidths=0.7)
    ax0.clabel(cs, inline=True, fontsize=7, fmt="%.1f")
    xs = np.linspace(*fn.xlim, 15)
    QX, QY = np.meshgrid(xs, xs)
    GX, GY = fn.grad(QX, QY, np)
    ax0.quiver(QX, QY, GX, GY, color="0.45", angles="xy", width=0.003)
    ax0.quiver(
        [POINT[0]], [POINT[1]], [gx], [gy], color="crimson", angles="xy", scale_units="xy", scale=0.6,
        width=0.008, label="∇f(p) (scaled)",
    )  # fmt: skip
    ax0.plot(*POINT, "o", color="crimson", markersize=6)
    tx, ty = -gy / gnorm, gx / gnorm
    ax0.plot(
        [POINT[0] - tx, POINT[0] + tx], [POINT[1] - ty, POINT[1] + ty], color="crimson", linestyle=":",
        label="level-curve direction (D_u f = 0)",
    )  # fmt: skip
    ax0.set_xlim(fn.xlim)
    ax0.set_ylim(fn.ylim)
    ax0.set_aspect("equal")
    ax0.set_xlabel("x")
    ax0.set_ylabel("y")
    ax0.set_title("Contours of f and its gradient field")
    ax0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)

    deg = np.degrees(thetas)
    ax1.plot(deg, d["autograd"], color="C0", linewidth=4, alpha=0.35, label="autograd: ∇f·u")
    ax1.plot(deg, d["jvp"], color="C1", linewidth=1.6, label="torch.func.jvp")
    ax1.plot(
        deg[::24],
        d["finite_differences"][::24],
        "k+",
        markersize=7,
        label=f"finite differences (h={FD_STEP:g})",
    )
    ax1.axhline(gnorm, color="crimson", linestyle="--", linewidth=1, label=f"|∇f(p)| = {gnorm:.4f}")
    ax1.axvline(
        math.degrees(gangle),
        color="crimson",
        linestyle=":",
        linewidth=1,
        label=f"gradient angle θ* = {math.degrees(gangle):.1f}°",
    )
    ax1.set_xlim(0, 360)
    ax1.set_xticks(range(0, 361, 45))
    ax1.set_xlabel("direction angle θ of u (degrees)")
    ax1.set_ylabel("directional derivative D_u f(p)")
    ax1.set_title("D_u f(p) over all directions: its maximum is |∇f(p)|")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)

    floor = 1e-20
    ax2.semilogy(
        deg,
        np.maximum(np.abs(d["autograd"] - d["jvp"]), floor),
        ".",
        markersize=2,
        color="C1",
        label="|autograd − jvp|",
    )
    ax2.semilogy(
        deg,
        np.maximum(np.abs(d["autograd"] - d["finite_differences"]), floor),
        ".",
        markersize=2,
        color="k",
        label="|autograd − finite differences|",
    )
    ax2.set_ylim(floor / 3, 1e-6)
    ax2.set_xlim(0, 360)
    ax2.set_xticks(range(0, 361, 45))
    ax2.set_xlabel("direction angle θ of u (degrees)")
    ax2.set_ylabel("absolute difference")
    ax2.set_title("The three methods agree (exact zeros drawn at 1e-20)")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False, markerscale=4)
    s.figure(
        fig,
        "gradient_directional",
        "Left: contours of f with its gradient field; the red arrow is ∇f at p, the dotted line the "
        "level-curve direction. Middle: the directional derivative over all directions by three "
        "methods; its maximum equals |∇f(p)| at the gradient's angle. Right: how far apart the methods are.",
        data=[csv_path, json_path],
    )

"""Part 7: resuming from a checkpoint, as an experiment.

The lecture's ``state_dict`` section says: to stop training and continue later, save the
model's *and the optimizer's* ``state_dict``, load both into fresh objects, and carry on;
the resumed run then continues exactly as if it had never stopped. Here every optimizer
trains the digits MLP for ``N`` steps three ways, on the same fixed sequence of
mini-batches:

1. uninterrupted;
2. stopped after ``N/2`` steps, model and optimizer state saved with ``torch.save``, loaded
   with ``torch.load`` into a freshly built (differently initialized) model and a fresh
   optimizer, then continued;
3. the same, but loading only the model (a fresh optimizer: momentum buffers, moment
   estimates, step counts and L-BFGS's history are lost).

Run 2 must lie exactly -- bit for bit -- on run 1; run 3 shows what the optimizer state
carries (nothing for a stateless rule such as plain SGD).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..registry import get_spec
from .config import LabConfig, progress
from .digits import BATCH_SIZE, DigitsData, load_data, make_model
from .engine import LabOptimizer
from .plotting import new_figure
from .report import Report

__all__ = ["resume_experiment", "run", "SHOWN"]

SHOWN = "adam"  # the optimizer whose curves the figure shows


def _batches(n_train: int, steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n_train, generator=gen)
        out.extend(perm[b : b + BATCH_SIZE] for b in range(0, n_train - BATCH_SIZE + 1, BATCH_SIZE))
    return out[:steps]


def _train(
    model: torch.nn.Module, opt: LabOptimizer, data: DigitsData, batches: list[torch.Tensor]
) -> list[float]:
    losses = []
    for idx in batches:
        xb, yb = data.x_train[idx], data.y_train[idx]

        def loss_and_grad(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            return loss.detach()

        losses.append(opt.step(loss_and_grad))
    return losses


def resume_experiment(
    name: str, lr: float, steps: int, data: DigitsData, seed: int = 0, workdir: str | Path | None = None
) -> dict[str, Any]:
    """The three runs for one optimizer; losses are those at the start of every step."""
    batches = _batches(len(data.y_train), steps, seed)
    half = steps // 2

    model = make_model(seed)
    opt = LabOptimizer(name, model.parameters(), lr)
    full = _train(model, opt, data, batches)
    full_params = [p.detach().clone() for p in model.parameters()]

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ckpt = Path(tmp) / "checkpoint.pt"
        model = make_model(seed)
        opt = LabOptimizer(name, model.parameters(), lr)
        first = _train(model, opt, data, batches[:half])
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": half}, ckpt)
        del model, opt

        out = {}
        for with_state in (True, False):
            state = torch.load(ckpt, weights_only=True)
            model = make_model(seed + 1)  # different weights, overwritten by the checkpoint
            model.load_state_dict(state["model"])
            opt = LabOptimizer(name, model.parameters(), lr)
            if with_state:
                opt.load_state_dict(state["optimizer"])
            rest = _train(model, opt, data, batches[state["step"] :])
            same = all(torch.equal(a, b.detach()) for a, b in zip(full_params, model.parameters()))
            out[with_state] = (first + rest, same)
        size = ckpt.stat().st_size

    resumed, resumed_same = out[True]
    fresh, fresh_same = out[False]
    full_a, res_a, fresh_a = np.array(full), np.array(resumed), np.array(fresh)
    return {
        "optimizer": get_spec(name).name,
        "lr": lr,
        "steps": steps,
        "stop_at": half,
        "checkpoint_bytes": size,
        "uninterrupted": full,
        "resumed": resumed,
        "resumed_without_optimizer_state": fresh,
        "resumed_losses_identical": bool(np.array_equal(full_a, res_a)),
        "resumed_params_identical": resumed_same,
        "max_abs_diff_resumed": float(np.max(np.abs(full_a - res_a))),
        "max_abs_diff_without_state": float(np.max(np.abs(full_a - fresh_a))),
        "params_identical_without_state": fresh_same,
    }


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("resume", "7. Resume: stop, save, load, continue")
    data = load_data(cfg.seed)
    names = cfg.names
    steps = cfg.resume_steps
    results = {}
    for name in progress(names, "resume", cfg.progress):
        results[name] = resume_experiment(
            name, get_spec(name).lab_lr, steps, data, cfg.seed, workdir=report.out
        )
    n_exact = sum(r["resumed_losses_identical"] and r["resumed_params_identical"] for r in results.values())
    summary = {
        "steps": steps,
        "stop_at": steps // 2,
        "all_identical": n_exact == len(names),
        "optimizers": {
            n: {
                k: v
                for k, v in r.items()
                if k not in ("uninterrupted", "resumed", "resumed_without_optimizer_state")
            }
            for n, r in results.items()
        },
    }
    s.summary.update(summary)
    csv_path = s.csv(
        "resume_curves",
        ["optimizer", "step", "uninterrupted", "resumed", "resumed_without_optimizer_state"],
        (
            [n, k, r["uninterrupted"][k], r["resumed"][k], r["resumed_without_optimizer_state"][k]]
            for n, r in results.items()
            for k in range(steps)
        ),
    )
    j = s.json("resume", summary)

    s.text(
        "The lecture's <code>state_dict</code> section, as an experiment. Each optimizer trains the digits MLP "
        f"for {steps} steps on a fixed sequence of mini-batches (at its registry <code>lab_lr</code>), three ways: "
        f"uninterrupted; stopped after {steps // 2} steps, saved, loaded into a <em>fresh</em> model and optimizer "
        "and continued; and the same but restoring only the model. The checkpoint code is the lecture's:"
    )
    s.text(
        "<code>torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'step': step}, path)</code>"
        " … <code>ckpt = torch.load(path); model.load_state_dict(ckpt['model']); "
        "opt = optimkit.Adam(model.parameters(), lr=lr); opt.load_state_dict(ckpt['optimizer'])</code>"
    )
    s.text(
        f"Result: for {n_exact} of {len(names)} optimizers the resumed run is identical to the uninterrupted one "
        "— every loss and every final weight equal bit for bit. Without the optimizer state the run departs from "
        "the uninterrupted one for every optimizer that keeps state; for stateless ones (plain SGD) it does not."
    )
    r0 = results.get(SHOWN) or next(iter(results.values()))
    fig, (ax0, ax1) = new_figure(14, 4.8, ncols=2, width_ratios=[1.1, 1.0])
    k = np.arange(steps)
    half = steps // 2
    ax0.plot(k, r0["uninterrupted"], color="0.2", linewidth=2.5, alpha=0.45, label="uninterrupted")
    ax0.plot(
        k[half:], r0["resumed"][half:], "o", color="C0", markersize=3.5, label="resumed from the checkpoint"
    )
    ax0.plot(k[half:], r0["resumed_without_optimizer_state"][half:], "--", color="C3", linewidth=1.4,
             label="resumed, model only (fresh optimizer)")  # fmt: skip
    ax0.axvline(half - 0.5, color="0.5", linestyle=":", linewidth=1)
    ax0.text(half - 0.5, 0.5, "save / load ", transform=ax0.get_xaxis_transform(), rotation=90, ha="right",
             va="center", fontsize=9, color="0.3")  # fmt: skip
    ax0.set_xlabel("step")
    ax0.set_ylabel("mini-batch training loss")
    ax0.set_title(f"{r0['optimizer']} (γ={r0['lr']:g}): resumed run = uninterrupted run")
    ax0.legend(loc="upper right")

    floor = 1e-12
    order = list(results)
    dev = [max(results[n]["max_abs_diff_without_state"], floor) for n in order]
    ypos = np.arange(len(order))
    ax1.barh(ypos, dev, color="C3", alpha=0.8, label="model only (fresh optimizer)")
    for y, n in zip(ypos, order):
        r = results[n]
        if not (r["resumed_losses_identical"] and r["resumed_params_identical"]):
            ax1.text(
                floor * 1.5, y, "resumed WITH state differs!", va="center", fontsize=8.5, color="crimson"
            )
        elif r["max_abs_diff_without_state"] == 0:
            ax1.text(floor * 1.5, y, "0: no state to lose", va="center", fontsize=8.5, color="0.2")
    ax1.set_xscale("log")
    ax1.set_xlim(floor, max(dev) * 3 if max(dev) > floor else 1)
    ax1.set_yticks(ypos, order)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"largest |loss − uninterrupted loss| after resuming (log; 0 drawn at {floor:g})")
    ax1.set_title(f"Resumed without the optimizer state (with it: {n_exact} of {len(order)} identical)")
    s.figure(
        fig,
        "resume",
        f"Left: {r0['optimizer']} trained uninterrupted (grey), resumed from a checkpoint at step {half} (blue dots: "
        "exactly on the grey line) and resumed without the optimizer state (red dashes). Right: for every optimizer, "
        "how far the run without optimizer state strays; every run resumed with its state is identical.",
        data=[csv_path, j],
    )
    s.table(
        ["optimizer", "γ", "resumed = uninterrupted (losses)", "resumed = uninterrupted (weights)",
         "max |Δloss| resumed", "max |Δloss| model only", "checkpoint bytes"],
        (
            [n, r["lr"], r["resumed_losses_identical"], r["resumed_params_identical"], r["max_abs_diff_resumed"],
             r["max_abs_diff_without_state"], r["checkpoint_bytes"]]
            for n, r in results.items()
        ),
        caption=f"Resuming after {steps // 2} of {steps} steps.",
    )  # fmt: skip

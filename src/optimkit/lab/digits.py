"""Part 5: real data -- an MLP on scikit-learn's bundled digits, trained by every optimizer.

The data are the 1,797 8x8 images of ``sklearn.datasets.load_digits`` (bundled with
scikit-learn, nothing is downloaded), pixels scaled to [0, 1], split 75/25 into training and
test sets (stratified, seeded). The model is ``64 → 64 (tanh) → 10``; every optimizer starts
from the same initial weights and sees the same mini-batches (64 images) in the same order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import PercentFormatter
from torch import nn
from torch.nn import functional as F

from ..registry import get_spec
from .config import LabConfig, progress
from .engine import LabOptimizer
from .plotting import color_of, new_figure, style_of
from .report import Report, Section

__all__ = [
    "DIGITS_SEARCH_DOC",
    "DigitsData",
    "DigitsRun",
    "load_data",
    "make_model",
    "train",
    "search",
    "run",
    "compare",
]

BATCH_SIZE = 64
HIDDEN = 64

DIGITS_SEARCH_DOC = (
    "Learning-rate search: each optimizer trains for a few epochs at every multiple "
    "×{factors} of the learning rate its registry entry suggests (<code>lab_lr</code>); the "
    "learning rate with the lowest training loss at the end (measured on the whole training "
    "set; diverged runs score +∞) is then used for the full run. When the best learning rate "
    "is at an end of the grid, the grid is extended by one more step in that direction (at "
    "most {extend} times). The test set plays no part in the choice."
)


@dataclass
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(seed: int = 0) -> DigitsData:
    """The digits, scaled to [0, 1] and split 75/25 (stratified, ``random_state=seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    return DigitsData(
        torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)
    )


def make_model(seed: int = 0) -> nn.Module:
    """``64 → 64 (tanh) → 10``, initialized from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 10))


@dataclass
class DigitsRun:
    optimizer: str
    lr: float
    train_loss: list[float] = field(default_factory=list)  # after each epoch; [0] is the start
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    evaluations: int = 0
    diverged: bool = False
    label: str = ""

    @property
    def final_loss(self) -> float:
        v = self.train_loss[-1]
        return v if math.isfinite(v) else math.inf

    @property
    def ms_per_epoch(self) -> float:
        return 1000 * float(np.mean(self.epoch_seconds)) if self.epoch_seconds else math.nan


def _evaluate(model: nn.Module, data: DigitsData, opt: LabOptimizer) -> tuple[float, float]:
    """Training loss and test accuracy, with the optimizer in evaluation mode (Schedule-Free
    optimizers are evaluated at their average, as their authors do; others have no modes)."""
    opt.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(data.x_train), data.y_train))
        acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    opt.train()
    return loss, acc


def train(name: str, lr: float, epochs: int, data: DigitsData, seed: int = 0) -> DigitsRun:
    """Train a fresh model (initial weights and batch order from ``seed``) with optimizer ``name``."""
    model = make_model(seed)
    opt = LabOptimizer(name, model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    out = DigitsRun(get_spec(name).name, lr)
    loss, acc = _evaluate(model, data, opt)
    out.train_loss.append(loss)
    out.test_accuracy.append(acc)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        start = time.perf_counter()
        for b in range(0, n, BATCH_SIZE):
            idx = perm[b : b + BATCH_SIZE]
            xb, yb = data.x_train[idx], data.y_train[idx]

            def loss_and_grad(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                return loss.detach()

            opt.step(loss_and_grad)
        out.epoch_seconds.append(time.perf_counter() - start)
        loss, acc = _evaluate(model, data, opt)
        out.train_loss.append(loss)
        out.test_accuracy.append(acc)
        if not math.isfinite(loss):
            out.diverged = True
            break
    out.evaluations = opt.evaluations
    return out


MAX_EXTENSIONS = 2


def search(
    name: str,
    factors: Sequence[float],
    epochs: int,
    data: DigitsData,
    seed: int = 0,
    extend: int = MAX_EXTENSIONS,
) -> list[DigitsRun]:
    """The runs of the learning-rate search (see ``DIGITS_SEARCH_DOC``), sorted by learning rate."""
    base = get_spec(name).lab_lr
    factors = sorted(factors)
    ratio = factors[1] / factors[0] if len(factors) > 1 else 10.0

    def at(f: float) -> DigitsRun:
        return train(name, float(f"{base * f:.3g}"), epochs, data, seed)

    runs = [at(f) for f in factors]
    for _ in range(extend):
        best = _best(runs)
        if best is runs[-1]:
            factors.append(factors[-1] * ratio)
            runs.append(at(factors[-1]))
        elif best is runs[0] and len(runs) > 1:
            factors.insert(0, factors[0] / ratio)
            runs.insert(0, at(factors[0]))
        else:
            break
    return runs


def _best(runs: Sequence[DigitsRun]) -> DigitsRun:
    return min(runs, key=lambda r: (r.final_loss, r.lr))


def _curves_figure(runs: Sequence[DigitsRun], by_run: bool = False) -> Any:
    fig, (ax0, ax1) = new_figure(14, 5.0, ncols=2)
    for i, r in enumerate(runs):
        if by_run:
            from matplotlib import colormaps

            kw = {"color": colormaps["tab10"](i % 10), "linestyle": "-", "linewidth": 1.4}
        else:
            kw = {"color": color_of(r.optimizer), "linestyle": style_of(r.optimizer), "linewidth": 1.4}
        ax0.semilogy(
            range(len(r.train_loss)), r.train_loss, label=f"{r.label or r.optimizer} (γ={r.lr:g})", **kw
        )
        ax1.semilogy(range(len(r.test_accuracy)), 100 * (1 - np.array(r.test_accuracy)), **kw)
    ax0.set_xlabel("epoch")
    ax0.set_ylabel("training loss (cross-entropy, log scale)")
    ax0.set_title("Training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test error = 100% − accuracy (log scale)")
    ax1.set_title("Test error")
    ax1.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    handles, labels = ax0.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8.5)
    return fig


_TABLE_COLUMNS = ["optimizer", "learning rate γ", "final training loss", "test accuracy", "ms per epoch",
                  "gradient evaluations", "diverged"]  # fmt: skip


def _table_rows(runs: Sequence[DigitsRun]) -> list[list[Any]]:
    return [
        [
            r.label or r.optimizer,
            r.lr,
            r.final_loss,
            r.test_accuracy[-1],
            r.ms_per_epoch,
            r.evaluations,
            r.diverged,
        ]
        for r in runs
    ]


def _curves_csv(s: Section, runs: Sequence[DigitsRun]) -> str:
    return s.csv(
        "digits_curves",
        ["optimizer", "lr", "epoch", "train_loss", "test_accuracy", "epoch_seconds"],
        (
            [
                r.label or r.optimizer,
                r.lr,
                e,
                r.train_loss[e],
                r.test_accuracy[e],
                r.epoch_seconds[e - 1] if e else "",
            ]
            for r in runs
            for e in range(len(r.train_loss))
        ),
    )


def _run_summary(r: DigitsRun) -> dict[str, Any]:
    return {
        "lr": r.lr,
        "final_train_loss": r.final_loss,
        "test_accuracy": r.test_accuracy[-1],
        "ms_per_epoch": r.ms_per_epoch,
        "evaluations": r.evaluations,
        "diverged": r.diverged,
    }


def _data_text(data: DigitsData, epochs: int) -> str:
    return (
        f"scikit-learn's bundled digits ({len(data.y_train) + len(data.y_test)} 8×8 images of handwritten digits, "
        f"no download): {len(data.y_train)} for training, {len(data.y_test)} for testing. The model is an MLP "
        f"64 → {HIDDEN} (tanh) → 10 trained with cross-entropy on mini-batches of {BATCH_SIZE}; every optimizer "
        f"starts from the same weights and sees the same batches in the same order, for {epochs} epochs. "
    )


def run(report: Report, cfg: LabConfig) -> None:
    s = report.section("digits", "5. Real data: an MLP on the digits")
    data = load_data(cfg.seed)
    names = cfg.names
    searches: dict[str, list[DigitsRun]] = {}
    finals: dict[str, DigitsRun] = {}
    for name in progress(names, "digits (search + training)", cfg.progress):
        searches[name] = search(name, cfg.digits_search_factors, cfg.digits_search_epochs, data, cfg.seed)
        finals[name] = train(name, _best(searches[name]).lr, cfg.digits_epochs, data, cfg.seed)
    runs = [finals[n] for n in names]

    factors = "{" + ", ".join(f"{f:g}" for f in cfg.digits_search_factors) + "}"
    s.text(
        _data_text(data, cfg.digits_epochs)
        + DIGITS_SEARCH_DOC.format(factors=factors, extend=MAX_EXTENSIONS)
        + f" Search budget: {cfg.digits_search_epochs} epochs. Muon takes the two weight matrices and a default "
        "Adam the biases (Muon only takes matrices); L-BFGS does one line-searched iteration per mini-batch; "
        "the Schedule-Free optimizers are evaluated in their eval() mode (at their average), as their authors do. "
        "Time per epoch is the training time only (no evaluation), on one CPU thread; it is the one number "
        "here that changes from run to run."
    )
    ranked = sorted(names, key=lambda n: -finals[n].test_accuracy[-1])
    s.text(
        "Best test accuracy: "
        + ", ".join(f"{n} {100 * finals[n].test_accuracy[-1]:.1f}%" for n in ranked[:3])
        + "; lowest: "
        + ", ".join(f"{n} {100 * finals[n].test_accuracy[-1]:.1f}%" for n in ranked[-2:])
        + "."
    )
    curves_csv = _curves_csv(s, runs)
    search_csv = s.csv(
        "digits_search",
        ["optimizer", "lr", "final_train_loss", "test_accuracy", "chosen"],
        (
            [n, r.lr, r.final_loss, r.test_accuracy[-1], r.lr == finals[n].lr]
            for n in names for r in searches[n]
        ),
    )  # fmt: skip
    summary = {
        "epochs": cfg.digits_epochs,
        "search_epochs": cfg.digits_search_epochs,
        "search_factors": cfg.digits_search_factors,
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "optimizers": {
            n: {**_run_summary(finals[n]), "search": {f"{r.lr:g}": r.final_loss for r in searches[n]}}
            for n in names
        },
    }
    j = s.json("digits", summary)
    s.summary.update(summary)

    s.figure(
        _curves_figure(runs),
        "digits_curves",
        "The digits MLP trained by every optimizer at its searched learning rate: training loss (left) and test "
        "error, 100% minus the accuracy (right), after each epoch.",
        data=[curves_csv, j],
    )
    fig, ax = new_figure(9.5, 4.6)
    for n in names:
        lrs = [r.lr for r in searches[n]]
        losses = [min(r.final_loss, 1e3) for r in searches[n]]
        ax.loglog(lrs, losses, marker="o", markersize=3.5, color=color_of(n), linestyle=style_of(n), label=n)
        ax.plot([finals[n].lr], [min(_best(searches[n]).final_loss, 1e3)], "o", markersize=9, markerfacecolor="none",
                markeredgecolor=color_of(n), markeredgewidth=1.6)  # fmt: skip
    ax.set_xlabel("learning rate γ (log scale)")
    ax.set_ylabel(f"training loss after {cfg.digits_search_epochs} epochs (diverged: 1e3)")
    ax.set_title(f"The learning-rate search on the digits (×{factors} lab_lr, extended at the ends)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8.5)
    s.figure(fig, "digits_search", "The search: training loss at the end of the search budget for every learning "
             "rate tried; the chosen one is circled.", data=[search_csv])  # fmt: skip
    s.table(_TABLE_COLUMNS, _table_rows(runs), caption=f"The digits MLP after {cfg.digits_epochs} epochs.")


def compare(
    report: Report,
    names: Sequence[str],
    lrs: Sequence[float] | None,
    epochs: int,
    seed: int = 0,
    show_progress: bool = True,
) -> list[DigitsRun]:
    """``optimkit lab digits``: every optimizer at every learning rate of ``lrs`` (default: the
    registry's ``lab_lr``) for ``epochs`` epochs."""
    s = report.section("digits", "The digits MLP")
    data = load_data(seed)
    jobs = [(n, lr) for n in names for lr in (lrs or [None])]
    runs = []
    for name, lr in progress(jobs, "digits", show_progress):
        r = train(name, get_spec(name).lab_lr if lr is None else lr, epochs, data, seed)
        r.label = r.optimizer if not lrs or len(lrs) == 1 else f"{r.optimizer} γ={r.lr:g}"
        runs.append(r)
    s.text(_data_text(data, epochs))
    csv_path = _curves_csv(s, runs)
    j = s.json("digits", {r.label: _run_summary(r) for r in runs})
    by_run = bool(lrs) and len(lrs) > 1
    s.figure(_curves_figure(runs, by_run), "digits_curves", "Training loss and test error (100% − accuracy) per epoch.",
             data=[csv_path, j])  # fmt: skip
    s.table(_TABLE_COLUMNS, _table_rows(runs), caption=f"After {epochs} epochs.")
    return runs

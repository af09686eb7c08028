"""``optimkit lab``: build the whole report."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import __version__
from .config import LabConfig, torch_threads
from .report import Report

__all__ = ["SECTIONS", "build_report"]


def _sections() -> dict[str, Callable[[Report, LabConfig], None]]:
    from . import digits, gradient, learning_rate, lm, momentum, paths, resume

    return {
        "gradient": gradient.run,
        "learning-rate": learning_rate.run,
        "momentum": momentum.run,
        "paths": paths.run,
        "digits": digits.run,
        "lm": lm.run,
        "resume": resume.run,
    }


#: The report's parts, in order (``--sections`` takes a subset).
SECTIONS = ("gradient", "learning-rate", "momentum", "paths", "digits", "lm", "resume")


def build_report(
    out: str | Path = "lab_report",
    quick: bool = False,
    optimizers: Sequence[str] = (),
    seed: int = 0,
    progress: bool = True,
    sections: Sequence[str] = (),
) -> Path:
    """Run the lab and write ``out/index.html`` (with ``fig/``, ``data/`` and ``summary.json``).

    Args:
        out: output directory (created).
        quick: small budgets (a minute or two on two cores).
        optimizers: registry names; empty means every registered optimizer.
        seed: seeds initial weights, the data split and the batch order; with the same seed
            (and versions) every number in the report is the same, except the timings.
        progress: progress bars on stderr.
        sections: a subset of :data:`SECTIONS` (empty: all).

    Returns:
        The path of ``index.html``.
    """
    from .plotting import lab_style

    cfg = LabConfig(quick=quick, seed=seed, optimizers=list(optimizers), progress=progress)
    names = cfg.names  # validates the names early
    wanted = list(sections) or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known sections: {', '.join(SECTIONS)}")
    report = Report(out, "The optimizer lab")
    report.meta = {
        "mode": "quick" if quick else "full",
        "seed": seed,
        "optimizers": len(names),
        "optimkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    runners = _sections()
    start = time.perf_counter()
    with torch_threads(1), lab_style():
        for key in SECTIONS:
            if key not in wanted:
                continue
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            runners[key](report, cfg)
            report.sections[-1].seconds = time.perf_counter() - t0
    report.meta["seconds"] = round(time.perf_counter() - start, 1)
    command = "optimkit lab" + (" --quick" if quick else "") + (f" --seed {seed}" if seed else "")
    if optimizers:
        command += " --optimizers " + ",".join(names)
    report.meta["command"] = command
    return report.write()

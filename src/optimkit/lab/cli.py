"""``optimkit lab``: the full report, and subcommands for your own comparisons.

::

    optimkit lab [--out DIR] [--quick] [--optimizers adam,sgd ...] [--seed N] [--sections ...]
    optimkit lab paths --function rosenbrock --optimizers adam,sgd --lr 0.01,0.001 [--steps N] [--start=X,Y]
    optimkit lab digits --optimizers adam,nadam [--lr 0.001,0.01] [--epochs N]
    optimkit lab lm --optimizers adam,lion [--lr 0.001,0.01] [--steps N]
    optimkit lab gd --lr 0.1,0.2,0.26 [--steps N]
    optimkit lab list

Lists take commas or spaces. With several optimizers and several learning rates, every
optimizer runs at every learning rate. This module imports only argparse: the heavy imports
happen when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x for x in v.split(",") if x)
    return out


def _floats(values: list[str] | None) -> list[float]:
    try:
        return [float(x) for x in _split(values)]
    except ValueError as e:
        raise SystemExit(f"optimkit lab: not a number: {e}") from None


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (e.g. --start=-1.2,1), got {text!r}") from None
    return x, y


def _names(values: list[str] | None) -> list[str]:
    from ..registry import get_spec

    try:
        return [get_spec(n).name for n in _split(values)]
    except KeyError as e:
        raise SystemExit(f"optimkit lab: {e.args[0]}") from None


def _report(out: str, title: str) -> Any:
    from .report import Report

    return Report(out, title)


def _done(path: Path) -> int:
    print(f"Report written to {path.resolve()} (open it in a browser).")
    return 0


# ---------------------------------------------------------------- handlers


def _lab(args: argparse.Namespace) -> int:
    from .build import build_report

    try:
        path = build_report(
            out=args.lab_out,
            quick=args.lab_quick,
            optimizers=_names(args.lab_optimizers),
            seed=args.lab_seed,
            progress=not args.lab_no_progress,
            sections=_split(args.lab_sections),
        )
    except ValueError as e:
        raise SystemExit(f"optimkit lab: {e}") from None
    return _done(path)


def _paths(args: argparse.Namespace) -> int:
    import torch

    from .config import torch_threads
    from .engine import log_grid
    from .functions import get_function
    from .paths import compare
    from .plotting import lab_style

    try:
        fn = get_function(args.function)
    except KeyError as e:
        raise SystemExit(f"optimkit lab paths: {e.args[0]}") from None
    names = _names(args.optimizers) or ["sgd", "adam"]
    report = _report(args.out, f"Optimizer paths on {fn.name}")
    with torch_threads(1), lab_style():
        torch.manual_seed(args.seed)
        runs = compare(
            report, fn, names, _floats(args.lr), args.steps, start=args.start,
            grid=log_grid(1e-4, 10.0, 2), show_progress=not args.no_progress,
        )  # fmt: skip
    path = report.write()
    for r in runs:
        status = "diverged" if r.diverged else f"f - f* = {r.final_gap:.3g}, distance {r.final_distance:.3g}"
        print(f"  {r.label or r.optimizer:>24s}  lr={r.lr:<8g} {status}")
    return _done(path)


def _digits(args: argparse.Namespace) -> int:
    import torch

    from .config import torch_threads
    from .digits import compare
    from .plotting import lab_style

    names = _names(args.optimizers) or ["sgd", "adam"]
    report = _report(args.out, "The digits MLP")
    with torch_threads(1), lab_style():
        torch.manual_seed(args.seed)
        runs = compare(
            report, names, _floats(args.lr), args.epochs, args.seed, show_progress=not args.no_progress
        )
    path = report.write()
    for r in runs:
        print(
            f"  {r.label or r.optimizer:>24s}  lr={r.lr:<8g} loss {r.final_loss:.4f}  accuracy {100 * r.test_accuracy[-1]:.1f}%"
        )
    return _done(path)


def _lm(args: argparse.Namespace) -> int:
    import torch

    from .config import torch_threads
    from .lm import compare
    from .plotting import lab_style

    if args.steps < 1 or args.eval_every < 1:
        raise SystemExit("optimkit lab lm: --steps and --eval-every must be positive")
    names = _names(args.optimizers) or ["sgd", "adam"]
    report = _report(args.out, "The character transformer")
    with torch_threads(1), lab_style():
        torch.manual_seed(args.seed)
        runs = compare(report, names, _floats(args.lr), args.steps, args.seed,
                       show_progress=not args.no_progress, eval_every=args.eval_every)  # fmt: skip
    path = report.write()
    for r in runs:
        status = r.note or ("diverged" if r.diverged else f"validation loss {r.final_val_loss:.4f}")
        print(f"  {r.label or r.optimizer:>24s}  lr={r.lr:<8g} {status}  ({r.ms_per_step:.1f} ms per step)")
    return _done(path)


def _gd(args: argparse.Namespace) -> int:
    from .config import LabConfig
    from .learning_rate import SHOWN_LRS, run
    from .plotting import lab_style

    report = _report(args.out, "Gradient descent on 4x²")
    with lab_style():
        run(report, LabConfig(progress=False), lrs=_floats(args.lr) or list(SHOWN_LRS), steps=args.steps)
    return _done(report.write())


def _list(args: argparse.Namespace) -> int:
    from ..registry import REGISTRY
    from .functions import FUNCTIONS

    print("optimizers (from optimkit.registry):")
    for spec in REGISTRY.values():
        flags = [f for f, on in (("closure", spec.closure), ("matrix only", spec.matrix_only),
                                 (f"sparse={spec.sparse}", spec.sparse != "no")) if on]  # fmt: skip
        print(f"  {spec.name:12s} lab_lr={spec.lab_lr:<6g} {', '.join(flags)}")
    print("functions:")
    for fn in FUNCTIONS.values():
        print(f"  {fn.name:12s} {fn.formula}; minimum {fn.minimum}, start {fn.start}")
    from .build import SECTIONS

    print("sections:", ", ".join(SECTIONS))
    return 0


# ---------------------------------------------------------------- parsers


def add_parser(subparsers: Any) -> None:
    """Register ``optimkit lab`` (and its subcommands) on ``subparsers``."""
    lab = subparsers.add_parser(
        "lab",
        help="build the optimizer lab: an HTML report of the lecture's ideas, computed",
        description="Build the optimizer lab report (DIR/index.html, figures, and the numbers as CSV/JSON). "
        "Subcommands run your own comparisons.",
    )
    lab.add_argument(
        "--out",
        dest="lab_out",
        default="lab_report",
        metavar="DIR",
        help="output directory (default: lab_report)",
    )
    lab.add_argument(
        "--quick", dest="lab_quick", action="store_true", help="small budgets: a minute or two on two cores"
    )
    lab.add_argument("--optimizers", dest="lab_optimizers", nargs="+", metavar="NAME",
                     help="registry names, commas or spaces (default: every registered optimizer)")  # fmt: skip
    lab.add_argument("--seed", dest="lab_seed", type=int, default=0, help="seed (default: 0)")
    lab.add_argument("--sections", dest="lab_sections", nargs="+", metavar="SECTION",
                     help="only these parts: gradient, learning-rate, momentum, paths, digits, lm, resume")  # fmt: skip
    lab.add_argument("--no-progress", dest="lab_no_progress", action="store_true", help="no progress bars")
    lab.set_defaults(func=_lab)
    sub = lab.add_subparsers(dest="lab_command", metavar="{paths,digits,lm,gd,list}")

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, metavar="DIR", help=f"output directory (default: {out})")
        p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("paths", help="optimizers' paths on a 2-D test function",
                       description="Run optimizers on a 2-D test function and draw their paths. Without --lr, "
                       "each optimizer's learning rate is searched (log grid 1e-4..10, best final value).")  # fmt: skip
    p.add_argument(
        "--function", default="rosenbrock", help="rosenbrock, beale or rastrigin (default: rosenbrock)"
    )
    p.add_argument("--optimizers", nargs="+", metavar="NAME", help="registry names (default: sgd,adam)")
    p.add_argument("--lr", nargs="+", metavar="LR", help="learning rates; every optimizer runs at each")
    p.add_argument("--steps", type=int, default=500, help="steps per run (default: 500)")
    p.add_argument(
        "--start",
        type=_point,
        metavar="X,Y",
        help="starting point, e.g. --start=-1.2,1 (default: the function's)",
    )
    common(p, "lab_report_paths")
    p.set_defaults(func=_paths)

    p = sub.add_parser("digits", help="train the digits MLP with chosen optimizers and learning rates")
    p.add_argument("--optimizers", nargs="+", metavar="NAME", help="registry names (default: sgd,adam)")
    p.add_argument("--lr", nargs="+", metavar="LR", help="learning rates (default: each optimizer's lab_lr)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    common(p, "lab_report_digits")
    p.set_defaults(func=_digits)

    p = sub.add_parser("lm", help="train the character-level transformer with chosen optimizers and learning rates",
                       description="Train the lab's character-level transformer on Python's own module "
                       "docstrings with each optimizer at each learning rate (default: its lab_lr).")  # fmt: skip
    p.add_argument("--optimizers", nargs="+", metavar="NAME", help="registry names (default: sgd,adam)")
    p.add_argument("--lr", nargs="+", metavar="LR", help="learning rates (default: each optimizer's lab_lr)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    p.add_argument("--eval-every", type=int, default=10, help="steps between evaluations (default: 10)")
    common(p, "lab_report_lm")
    p.set_defaults(func=_lm)

    p = sub.add_parser("gd", help="gradient descent on 4x² at chosen learning rates")
    p.add_argument(
        "--lr", nargs="+", metavar="LR", help="learning rates (default: 0.05 0.125 0.2 0.25 0.26 0.3)"
    )
    p.add_argument("--steps", type=int, default=20, help="steps (default: 20)")
    common(p, "lab_report_gd")
    p.set_defaults(func=_gd)

    p = sub.add_parser("list", help="list the optimizers, test functions and sections")
    p.set_defaults(func=_list)


def _main() -> None:  # pragma: no cover - convenience: python -m optimkit.lab.cli
    from ..cli import main

    sys.exit(main(["lab", *sys.argv[1:]]))


if __name__ == "__main__":  # pragma: no cover
    _main()

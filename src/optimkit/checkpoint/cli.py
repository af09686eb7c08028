"""``optimkit ckpt show PATH``: what a checkpoint holds, for either backend.

:func:`describe` and :func:`inspect` read a one-file checkpoint (``step-*.ckpt``, see
:mod:`optimkit.checkpoint.format`) or a distributed checkpoint directory (``step-*.dcp``, see
:mod:`optimkit.checkpoint.dcp`); :func:`add_cli` registers the subcommand on the ``optimkit``
command line (:mod:`optimkit.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from . import dcp
from .format import CheckpointError, describe_file

__all__ = ["describe", "inspect", "add_cli", "cli_show"]


# ---------------------------------------------------------------------------- inspect
def describe(path: str | os.PathLike) -> str:
    """What :func:`inspect` prints, as a string."""
    path = Path(path)
    if path.is_dir():
        return dcp.describe(path)
    return describe_file(path)


def inspect(path: str | os.PathLike, *, file: TextIO | None = None) -> None:
    """Print what a checkpoint holds (step, objects, optimizer type and hyperparameters,
    sizes) without loading it into a model. Verifies the checksum; never runs code."""
    print(describe(path), file=file if file is not None else sys.stdout)


# ---------------------------------------------------------------------------- CLI
def _run_show(args: argparse.Namespace) -> int:
    try:
        inspect(args.path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ckpt show PATH`` on an argparse ``subparsers``; the handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser("ckpt", help="inspect training checkpoints")
    commands = parser.add_subparsers(dest="ckpt_command", required=True)
    show = commands.add_parser("show", help="print what a checkpoint holds")
    show.add_argument("path", help="a checkpoint file (step-*.ckpt) or distributed checkpoint directory (step-*.dcp)")
    show.set_defaults(func=_run_show)
    return parser


def cli_show(argv: list[str]) -> int:
    """``optimkit ckpt show PATH`` as a function: ``cli_show([PATH])`` returns the exit code."""
    parser = argparse.ArgumentParser(prog="optimkit ckpt show", description="print what a checkpoint holds")
    parser.add_argument("path", help="a checkpoint file (step-*.ckpt) or distributed checkpoint directory (step-*.dcp)")
    return _run_show(parser.parse_args(argv))


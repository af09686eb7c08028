"""The ``optimkit`` command line: a small dispatcher of subcommands.

Each subcommand lives in its own module as a function ``add_parser(subparsers)`` that adds
its parser and sets ``func`` (called with the parsed arguments, returning an exit code).
Adding a subcommand is one line in :data:`COMMANDS`. The modules named here must import
quickly (no heavy imports at module level), since every invocation imports all of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: ``"module:function"`` for every subcommand, in ``--help`` order.
COMMANDS: list[str] = [
    "optimkit.lab.cli:add_parser",  # optimkit lab [paths|digits|gd]
    "optimkit.checkpoint:add_cli",  # optimkit ckpt show PATH
    "optimkit.bench:add_parser",  # optimkit bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimkit", description="optimkit: the PyTorch optimizer system from first principles."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"optimkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in COMMANDS:
        module, _, func = entry.partition(":")
        getattr(importlib.import_module(module), func)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optimkit`` script (``[project.scripts] optimkit = "optimkit.cli:main"``)."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

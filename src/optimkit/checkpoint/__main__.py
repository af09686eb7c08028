"""``python -m optimkit.checkpoint show PATH``: the same as ``optimkit ckpt show PATH``."""

from __future__ import annotations

import argparse
import sys

from .cli import add_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optimkit.checkpoint")
    add_cli(parser.add_subparsers(dest="command", required=True))
    cli_args = parser.parse_args(["ckpt", *(sys.argv[1:] if argv is None else argv)])
    return cli_args.func(cli_args)


if __name__ == "__main__":
    sys.exit(main())

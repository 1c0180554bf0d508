"""The ``mpruner`` command line: ``python -m mpruner <command>``.

One module per subcommand (``info``, ``analyze``, ``prune`` with its LM and later-stage
options, ``demo``, ``bench``), each with ``add_parser(subparsers)``; what they share is in
:mod:`.common`. Arguments are checked before anything slow loads.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import analyze, bench, demo, info, prune
from .info import cmd_info

__all__ = ["main", "build_parser", "cmd_info"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpruner", description="Depth pruning by CKA layer redundancy (MPruner).")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for command in (info, analyze, bench, prune, demo):
        command.add_parser(sub)
    return parser


def _short_warning(message, category, filename, lineno, line=None) -> str:
    # A command-line user needs the message, not the library line that raised it.
    return f"mpruner: {category.__name__}: {message}\n"


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    saved, warnings.formatwarning = warnings.formatwarning, _short_warning
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for the model card
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

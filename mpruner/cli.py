"""The ``mpruner`` command line: ``python -m mpruner <command>``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def cmd_info(args) -> int:
    """Prints how mpruner was built and what it can run on."""
    import torch

    import mpruner

    info = mpruner.build_info()
    rows = [
        ("mpruner", mpruner.__version__),
        ("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"),
        ("backends compiled", "CPU, CUDA" if info["cuda"] else "CPU"),
        ("CUDA version", info["cuda_version"] or "-"),
        ("CUDA archs", info["cuda_archs"] or "-"),
        ("GPU visible", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no"),
        ("OpenMP", f"yes, {info['openmp_max_threads']} threads" if info["openmp"] else "no"),
        ("torch threads", str(torch.get_num_threads())),
        ("compiler", info["compiler"]),
        ("location", os.path.dirname(mpruner.__file__)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpruner", description="Depth pruning by CKA layer redundancy (MPruner).")
    sub = parser.add_subparsers(dest="command", metavar="command")
    p = sub.add_parser("info", help="show version, torch, compiled backends, CUDA and OpenMP",
                       description="Show how mpruner was built (version, torch, compiled backends, CUDA "
                                   "architectures, OpenMP) and what this machine offers.")
    p.set_defaults(func=cmd_info)
    from .analysis.cli import add_analyze_parser
    add_analyze_parser(sub)
    from .bench.cli import add_parser as add_bench_parser  # `mpruner bench`, implemented in mpruner/bench/
    add_bench_parser(sub)
    from .prune.cli import add_parsers as add_prune_parsers  # `mpruner prune` and `mpruner demo`
    add_prune_parsers(sub)
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
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    finally:
        warnings.formatwarning = saved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``mpruner info``: how mpruner was built and what this machine offers."""
from __future__ import annotations

import os


def add_parser(sub) -> None:
    """Registers ``info`` on the ``mpruner`` command's subparsers."""
    p = sub.add_parser("info", help="show version, torch, compiled backends, CUDA and OpenMP",
                       description="Show how mpruner was built (version, torch, compiled backends, CUDA "
                                   "architectures, OpenMP) and what this machine offers.")
    p.set_defaults(func=cmd_info)


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

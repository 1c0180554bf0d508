"""mpruner bench: the CKA benchmark suite from the command line.

Every row runs in its own subprocess on the same activations; times, ratios to mpruner,
errors against a float64 reference of each row's estimator and peak memory go to --out.

    mpruner bench --quick                           # a first look: small sizes, ~30 s of CPU time
    mpruner bench                                   # CPU: dense, conv, tokens + N/L/d sweeps
    mpruner bench --peers all --out benchmarks/results
    mpruner bench --device cuda --workload gpu,tokens
    mpruner bench --workload dense --peers none --repeats 3
    mpruner bench --workload dense,conv --precision highest,high,medium
    mpruner bench --replot --out benchmarks/results # tables and plots again from the JSON
"""
# (The docstring is the command's --help description: plain text, no reST markup.)
from __future__ import annotations

import argparse

from ..bench.suite import SWEEP_METHODS

def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark mpruner's CKA against other CKA libraries and the hardware",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="all",
                   help="comma list of dense, conv, tokens, gpu, dense-small, tokens-small, sweep-N, sweep-L, "
                        "sweep-d, or the groups headline, sweeps, all (default: all = headline + sweeps)")
    p.add_argument("--quick", action="store_true",
                   help="a first look at small sizes (about 30 s of CPU time): the workloads dense-small and "
                        "tokens-small, mpruner against the plain-PyTorch rows, the floor and pytorch-cka (the "
                        "fastest peer, where installed), 3 repeats, one "
                        "process per row, no waiting for a quiet machine; files tagged <device>-quick "
                        "(default: off)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to compute (default: %(default)s)")
    p.add_argument("--peers", default="installed",
                   help="installed (default: those already installed), all (installs missing ones with "
                        "pip --no-deps first), none, or a comma list of torch-cka, cka-pytorch, pytorch-cka, "
                        "ckatorch, cka-analyzer")
    p.add_argument("--precision", default="auto",
                   help="comma list of mpruner's GEMM modes to give rows (highest, high, medium; tf32 is high), or "
                        "auto: highest and the modes this hardware runs natively (CUDA sm_80+: all; a CPU with "
                        "AMX-BF16 or AVX512-BF16: all; else highest) (default: %(default)s)")
    p.add_argument("--out", default="mpruner-bench", help="directory for the JSON and PNG files (default: %(default)s)")
    p.add_argument("--tag", default=None, help="file name prefix (default: cpu or gpu; with --quick cpu-quick/gpu-quick)")
    p.add_argument("--methods", default=None,
                   help="comma list: run only these rows, e.g. mpruner,pytorch-cka (default: every row that applies; "
                        "an unknown name is refused with the list)")
    p.add_argument("--sweep-methods", default=",".join(SWEEP_METHODS),
                   help=f"methods in the scaling sweeps (default: {','.join(SWEEP_METHODS)})")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repeats after a warm-up, the median is reported (the sweeps use at most 3) "
                        "(default: %(default)s)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the timed repeats of one row; slower methods are timed on a subset of "
                        "batches / pairs / sequences and extrapolated (default 15)")
    p.add_argument("--timeout", type=float, default=600, help="hard limit per subprocess, s (default: %(default)s)")
    p.add_argument("--mem-cap", type=float, default=8,
                   help="cap on the resident (host) memory of each subprocess, GiB (GPU memory is capped by the GPU) "
                        "(default: %(default)s)")
    p.add_argument("--quiet-wait", type=float, default=60,
                   help="CPU: before each row wait up to this many seconds for the other processes' CPU use "
                        "to drop below 25%% (a shared machine's noise); 0 to skip (default: %(default)s)")
    p.add_argument("--retry-noisy", type=int, default=1,
                   help="CPU: measure a row again (up to this many times) when other processes used more than "
                        "25%% of the CPU while it ran, keeping the quieter measurement (default: %(default)s)")
    p.add_argument("--processes", type=int, default=3,
                   help="headline rows that take under 5 s: report the median over this many fresh processes "
                        "(the sweeps use one) (default: %(default)s)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the torch.profiler breakdown of mpruner (default: profiled)")
    p.add_argument("--work-dir", default=None,
                   help="keep references and subprocess logs here (default: a temporary directory)")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: rebuild the tables, goals and plots from the JSON files in --out "
                        "(default: off)")
    p.add_argument("--quiet", action="store_true",
                   help="print only the tables and goals, not a line per row while it runs (default: off)")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    """Entry point of ``mpruner bench``."""
    from ..bench.suite import run

    return run(args)

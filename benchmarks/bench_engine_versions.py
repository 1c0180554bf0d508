"""The accumulator of this checkout against another built checkout's, on the same machine.

    git worktree add ../mpruner-old <commit> && (cd ../mpruner-old && python setup.py build_ext --inplace)
    python benchmarks/bench_engine_versions.py --baseline ../mpruner-old [--rounds 6] [--out benchmarks/results]

"No slower than before" only means something on one machine: a number from another
processor (or a loaded one) says nothing about a change. This script times
``CKAAccumulator.update`` + ``compute`` and the bare batched GEMMs of the same shapes
(``bench_engine.py``'s dense and conv workloads) in a fresh process per checkout,
alternating the checkouts round after round so that noise hits both, and reports each
checkout's engine/GEMM ratio (each process's engine against its own GEMMs, median over
the processes) and current/baseline of those ratios (below 1: the current engine is faster). Only public API that every version has is used (``mpruner.CKAAccumulator``), so
any older build can be the baseline. Writes engine_versions_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Kept equal to bench_engine.WORKLOADS (that module imports this checkout's mpruner, which
# the baseline's worker must not): name -> (L layers, N samples, n per batch, d features).
WORKLOADS = {"dense": (12, 2048, 256, 768), "conv": (12, 512, 256, 64 * 16 * 16)}

WORKER = r"""
import json, statistics, sys, time
import torch
import mpruner
L, N, n, d = json.loads(sys.argv[1]); repeats = int(sys.argv[2])
g = torch.Generator().manual_seed(0)
mix = [torch.randn(32, d, generator=g) / 32**0.5 for _ in range(L)]
batches = []
for _ in range(N // n):
    z = torch.randn(n, 32, generator=g)
    batches.append([z @ mix[l] + (0.2 + 0.1 * l) * torch.randn(n, d, generator=g) + 1.0 for l in range(L)])
stacked = [torch.stack(b) for b in batches]
def engine():
    acc = mpruner.CKAAccumulator()
    for b in batches:
        acc.update(b)
    return acc.compute()
def gemm():
    for x in stacked:
        torch.bmm(x, x.transpose(1, 2))
engine(); gemm()
times = {"engine": [], "gemm": []}
for r in range(repeats):
    order = [("engine", engine), ("gemm", gemm)]
    for key, fn in (order if r % 2 == 0 else order[::-1]):
        t = time.perf_counter(); fn(); times[key].append(time.perf_counter() - t)
print(json.dumps(times))
"""


def _commit(tree):
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_worker(tree, shape, repeats):
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(shape), str(repeats)], env=env, cwd=tree,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the worker failed in {tree}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="a checkout with a built mpruner._C (no default)")
    parser.add_argument("--rounds", type=int, default=6, help="processes per checkout and workload (default 6)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per process (default 5)")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS), help="default: dense conv")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="default: benchmarks/results")
    args = parser.parse_args(argv)
    baseline = os.path.abspath(args.baseline)
    if not os.path.isdir(os.path.join(baseline, "mpruner")):
        parser.error(f"--baseline {args.baseline}: no mpruner package there; pass a checkout built in place")
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"--workloads: unknown {unknown}; choose from {sorted(WORKLOADS)}")
    sys.path[:0] = [ROOT, HERE]  # this checkout's mpruner for the machine record
    from bench_analysis import machine_info

    trees = {"current": ROOT, "baseline": baseline}
    rows = []
    for name in args.workloads:
        # Per process: the medians of its runs and their ratio. The bare GEMM's speed alone
        # varies by up to ~1.5x from one process to the next on a shared VM (memory placement),
        # so each engine time is judged against the GEMMs of its own process.
        per = {k: [] for k in trees}
        for r in range(args.rounds):
            for key in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                got = run_worker(trees[key], WORKLOADS[name], args.repeats)
                e, g = statistics.median(got["engine"]), statistics.median(got["gemm"])
                per[key].append({"engine_s": e, "bare_gemm_s": g, "ratio": e / g})
        row = {"workload": name, "shape": dict(zip("LNnd", WORKLOADS[name])), "rounds": args.rounds,
               "repeats": args.repeats}
        for k in trees:
            row[k] = {"ratio": statistics.median(p["ratio"] for p in per[k]),
                      "engine_s": statistics.median(p["engine_s"] for p in per[k]),
                      "bare_gemm_s": statistics.median(p["bare_gemm_s"] for p in per[k]), "processes": per[k]}
        row["ratio_current_vs_baseline"] = row["current"]["ratio"] / row["baseline"]["ratio"]
        rows.append(row)
        print(f"{name:6s} engine/GEMM: current {row['current']['ratio']:.2f}  baseline {row['baseline']['ratio']:.2f}"
              f"   current/baseline {row['ratio_current_vs_baseline']:.2f}")
    record = {"machine": machine_info("cpu"), "baseline": {"path": baseline, "commit": _commit(baseline)},
              "results": rows}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "engine_versions_cpu.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

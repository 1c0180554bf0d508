"""Where the CPU accumulator's time goes, against the bare GEMMs it is measured by.

    python benchmarks/profile_engine.py [--out benchmarks/results]     # writes engine_profile_cpu.json

For bench_engine.py's dense and conv workloads:
  * ``torch.profiler`` over the ``update()`` calls of one pass, the operators' self CPU time
    (all threads) grouped into Gram GEMMs, feature centering, the HSIC pass and the rest;
  * one thread, one layer's Gram: the upper triangle by the engine's block rows (64-row
    blocks at n <= 256, as ``csrc/include/mpruner/triangular_gram.h``) against one full
    ``torch.mm`` — what the triangle's halved flops buy in time on this processor.
Medians of interleaved repeats; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import mpruner  # noqa: E402
from bench_analysis import machine_info  # noqa: E402
from bench_engine import WORKLOADS, make_batches  # noqa: E402

GROUPS = {
    "gram_gemms": ("aten::mm", "aten::bmm", "aten::addmm"),
    "centering": ("aten::mean", "aten::sub", "aten::sum", "aten::div_", "aten::to", "aten::_to_copy", "aten::copy_"),
    "hsic_pass": ("mpruner::_hsic_partials", "aten::triu", "aten::mul", "aten::add", "aten::add_"),
}


def profile_updates(batches):
    from torch.profiler import ProfilerActivity, profile

    acc = mpruner.CKAAccumulator()
    acc.update(batches[0])  # warm-up
    acc.reset()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            acc.update(b)
    self_us = {}
    for e in prof.key_averages():
        self_us[e.key] = self_us.get(e.key, 0.0) + e.self_cpu_time_total
    total = sum(self_us.values())
    shares = {g: sum(self_us.get(k, 0.0) for k in keys) / total for g, keys in GROUPS.items()}
    shares["other"] = 1.0 - sum(shares.values())
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:8]
    return {"self_cpu_s_all_threads": total / 1e6, "shares": shares,
            "top_ops": [{"op": k, "self_cpu_s": v / 1e6} for k, v in top]}


def triangle_vs_full(n, d, repeats=15):
    """One thread: the engine's block-row upper triangle against one full mm, same layer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        out = torch.empty(n, n)
        block = 64 if n <= 256 else 128

        def tri():
            for r0 in range(0, n, block):
                rows = min(block, n - r0)
                torch.mm(x[r0:r0 + rows], x[r0:].t(), out=out[r0:r0 + rows, r0:])

        def full():
            torch.mm(x, x.t(), out=out)

        t = {"triangle": [], "full": []}
        tri(), full()
        for r in range(repeats):
            for key, fn in ([("triangle", tri), ("full", full)] if r % 2 == 0 else [("full", full), ("triangle", tri)]):
                t0 = time.perf_counter()
                fn()
                t[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in t.items()}
        flops = sum(min(block, n - r0) * (n - r0) for r0 in range(0, n, block)) / (n * n)
        return {"n": n, "d": d, "block": block, "triangle_s": med["triangle"], "full_s": med["full"],
                "time_ratio": med["triangle"] / med["full"], "flop_ratio": flops}
    finally:
        torch.set_num_threads(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="*", default=["dense", "conv"], help="default: dense conv")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="default: benchmarks/results")
    args = parser.parse_args(argv)
    rows = []
    for name in args.workloads:
        L, N, n, d = WORKLOADS[name]
        prof = profile_updates(make_batches(L, N, n, d, "cpu"))
        tri = triangle_vs_full(n, d)
        rows.append({"workload": name, "L": L, "N": N, "n": n, "d": d, "profile": prof, "one_thread_gram": tri})
        s = prof["shares"]
        print(f"{name:6s} GEMMs {s['gram_gemms']:.0%}  centering {s['centering']:.0%}  HSIC pass {s['hsic_pass']:.0%}"
              f"  other {s['other']:.0%}   one-thread triangle/full: time {tri['time_ratio']:.2f}, "
              f"flops {tri['flop_ratio']:.2f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "engine_profile_cpu.json")
    with open(path, "w") as f:
        json.dump({"machine": machine_info("cpu"), "results": rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

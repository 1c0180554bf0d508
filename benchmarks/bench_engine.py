"""Engine overhead: CKAAccumulator against the bare Gram GEMMs of the same shapes.

    pytest benchmarks/bench_engine.py --benchmark-only      # pytest-benchmark rows
    python benchmarks/bench_engine.py [--device cuda] [--out benchmarks/results]

The script interleaves engine and GEMM repeats (so machine noise hits both alike),
reports medians and their ratio, and writes engine_<device>.json. The goal
(engine <= 1.3x bare GEMM on CPU, <= 1.2x on GPU) is reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import pytest
import torch

import mpruner
from bench_analysis import machine_info  # one machine record for every benchmark script

WORKLOADS = {
    # name: (L layers, N samples in all, n per batch, d features)
    "dense": (12, 2048, 256, 768),
    "conv": (12, 512, 256, 64 * 16 * 16),
    "gpu": (24, 16384, 1024, 1024),
}


def make_batches(L, N, n, d, device, seed=0):
    """Structured activations (a shared low-rank signal plus noise and an offset), one batch at a time."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mix = [torch.randn(32, d, generator=g) / 32**0.5 for _ in range(L)]
    batches = []
    for _ in range(N // n):
        z = torch.randn(n, 32, generator=g)
        layers = [(z @ mix[l] + (0.2 + 0.1 * l) * torch.randn(n, d, generator=g) + 1.0).to(device) for l in range(L)]
        batches.append(layers)
    return batches


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_engine(batches, precision="highest"):
    acc = mpruner.CKAAccumulator(precision=precision)
    for b in batches:
        acc.update(b)
    return acc.compute()


def run_gemm(stacked, precision="highest"):
    """The floor: one batched GEMM X X^T per minibatch (no centering, no reduction)."""
    cuda = stacked[0].is_cuda
    if cuda:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for x in stacked:
            torch.bmm(x, x.transpose(1, 2))
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = prev


def timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def measure(name, device="cpu", precision="highest", repeats=7):
    L, N, n, d = WORKLOADS[name]
    batches = make_batches(L, N, n, d, device)
    stacked = [torch.stack(b) for b in batches]
    run_engine(batches, precision), run_gemm(stacked, precision)  # warm-up
    eng, gemm = [], []
    for _ in range(repeats):
        eng.append(timed(lambda: run_engine(batches, precision), device))
        gemm.append(timed(lambda: run_gemm(stacked, precision), device))
    e, g = statistics.median(eng), statistics.median(gemm)
    return {"workload": name, "L": L, "N": N, "n": n, "d": d, "device": str(device), "precision": precision,
            "engine_s": e, "bare_gemm_s": g, "ratio": e / g, "repeats": repeats,
            "goal": 1.3 if torch.device(device).type == "cpu" else 1.2}


# ---------------------------------------------------------------- pytest-benchmark
_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and mpruner.cuda_built() else [])
_CASES = [(w, dev) for dev in _DEVICES for w in ("dense", "conv")] + (
    [("gpu", "cuda")] if "cuda" in _DEVICES else [])


@pytest.mark.parametrize("workload,device", _CASES)
@pytest.mark.parametrize("what", ["engine", "bare_gemm"])
def test_engine_vs_gemm(benchmark, workload, device, what):
    L, N, n, d = WORKLOADS[workload]
    batches = make_batches(L, N, n, d, device)
    benchmark.group = f"{workload}-{device}"
    if what == "engine":
        benchmark.pedantic(lambda: (run_engine(batches), _sync(device)), rounds=5, warmup_rounds=1)
    else:
        stacked = [torch.stack(b) for b in batches]
        benchmark.pedantic(lambda: (run_gemm(stacked), _sync(device)), rounds=5, warmup_rounds=1)


# ---------------------------------------------------------------- script
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    names = args.workloads or (["dense", "conv"] + (["gpu"] if dev.type == "cuda" else []))
    precisions = ["highest", "tf32"] if dev.type == "cuda" else ["highest"]
    rows = [measure(w, dev, p, args.repeats) for w in names for p in precisions]
    print(f"{'workload':<8} {'precision':<9} {'engine':>10} {'bare GEMM':>10} {'ratio':>6}  goal")
    for r in rows:
        ok = "met" if r["ratio"] <= r["goal"] else f"missed by {r['ratio'] / r['goal']:.2f}x"
        print(f"{r['workload']:<8} {r['precision']:<9} {r['engine_s'] * 1e3:>8.1f}ms {r['bare_gemm_s'] * 1e3:>8.1f}ms "
              f"{r['ratio']:>6.2f}  <= {r['goal']} ({ok})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"engine_{dev.type}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine_info(dev), "results": rows}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())

"""The CUDA engine's open choices, side by side on one GPU run (it decides them):

* the HSIC reduction kernel: ``MPRUNER_HSIC_KERNEL=tiled`` (one tile row per barrier) against
  ``blocked`` (8 tile rows per barrier, 4x4 register blocks of layer pairs);
* the epilogue: the ATen glue after the HSIC pass against ``MPRUNER_FUSED_EPILOGUE=1`` (one
  ``_hsic_finish`` kernel);
* ``CKAAccumulator(cuda_graph=True)`` (update() replayed from a CUDA graph) against eager;
* the RBF median: ``_rbf_bandwidths`` by kthvalue (``sort``) against the bit-pattern histogram
  (``radix``).

    python benchmarks/bench_cuda_variants.py [--repeats 5] [--out DIR]     # writes cuda_variants.json

On the GPU workload (L=24, N=16384, n=1024, d=1024, activations made on the device), each
variant's update()+compute() time (median of interleaved repeats, CUDA synchronised) is
reported against the bare cuBLAS Grams (``torch.bmm``, the floor), with its largest CKA
difference from the baseline variant and from a float64 run of the baseline: a variant that
computes something else shows here, not only in the time. Kernel rows time ``_hsic_partials`` and
``_rbf_bandwidths`` alone with CUDA events. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import mpruner  # noqa: E402
from mpruner.engine.checks import gemm_precision  # noqa: E402
from bench_analysis import machine_info  # noqa: E402

WORKLOAD = {"L": 24, "N": 16384, "n": 1024, "d": 1024}
VARIANTS = {
    # name: (MPRUNER_HSIC_KERNEL, MPRUNER_FUSED_EPILOGUE, cuda_graph)
    "tiled": ("tiled", "0", False),
    "blocked": ("blocked", "0", False),
    "fused": ("tiled", "1", False),
    "graph": ("tiled", "0", True),
    "fused+graph": ("tiled", "1", True),
    "blocked+fused+graph": ("blocked", "1", True),
}


@contextlib.contextmanager
def switches(kernel, fused):
    old = {k: os.environ.get(k) for k in ("MPRUNER_HSIC_KERNEL", "MPRUNER_FUSED_EPILOGUE")}
    os.environ.update(MPRUNER_HSIC_KERNEL=kernel, MPRUNER_FUSED_EPILOGUE=fused)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_batches(L, N, n, d, device, seed=0):
    """A shared low-rank signal plus noise and an offset per layer, generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    mix = [torch.randn(32, d, generator=g, device=device) / 32**0.5 for _ in range(L)]
    batches = []
    for _ in range(N // n):
        z = torch.randn(n, 32, generator=g, device=device)
        batches.append([z @ mix[l] + (0.2 + 0.1 * l) * torch.randn(n, d, generator=g, device=device) + 1.0
                        for l in range(L)])
    return batches


def run(batches, variant, precision):
    kernel, fused, graph = VARIANTS[variant]
    with switches(kernel, fused):
        acc = mpruner.CKAAccumulator(precision=precision, cuda_graph=graph)
        for b in batches:
            acc.update(b)
        return acc.compute()


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bare_gemm(stacked, precision):
    with gemm_precision(precision, stacked[0].device):
        for x in stacked:
            torch.bmm(x, x.transpose(1, 2))


def event_ms(fn, repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_rows(batch, repeats):
    ops = mpruner.engine.ops.ops
    grams = ops.grams(batch, "linear", 0.5, True)
    rows = []
    for kernel in ("tiled", "blocked"):
        with switches(kernel, "0"):
            ms = event_ms(lambda: ops._hsic_partials(grams.unsqueeze(1), None, True), repeats)
            pairs, _ = ops._hsic_partials(grams.unsqueeze(1), None, True)
        rows.append({"name": f"_hsic_partials/{kernel}", "ms": ms, "pairs": pairs})
    diff = (rows[1].pop("pairs") - rows[0].pop("pairs")).abs().max().item()
    rows[1]["max_abs_diff_vs_tiled"] = diff
    full = ops.grams(batch, "linear", 0.5, False)
    for select in ("sort", "radix"):
        ms = event_ms(lambda: ops._rbf_bandwidths(full, 0.5, select), repeats)
        rows.append({"name": f"_rbf_bandwidths/{select}", "ms": ms,
                     "value": ops._rbf_bandwidths(full, 0.5, select).tolist()})
    rows[-1]["equal_to_sort"] = rows[-1]["value"] == rows[-2]["value"]
    for r in rows[-2:]:
        r.pop("value")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    if not (torch.cuda.is_available() and mpruner.cuda_built()):
        sys.exit("bench_cuda_variants: needs a GPU and a CUDA build of mpruner")
    dev = torch.device("cuda")
    w = WORKLOAD
    batches = make_batches(w["L"], w["N"], w["n"], w["d"], dev)
    stacked = [torch.stack(b) for b in batches]
    reference = run([[x.double() for x in b] for b in batches[:2]], "tiled", "highest")  # float64, 2 batches
    rows = []
    for precision in ("highest", "tf32"):
        names = ["bare_gemm"] + args.variants
        fns = {"bare_gemm": lambda: bare_gemm(stacked, precision)}
        fns.update({v: (lambda v=v: run(batches, v, precision)) for v in args.variants})
        results = {v: fns[v]() for v in args.variants}  # warm-up, and each variant's result
        times = {v: [] for v in names}
        for r in range(args.repeats):  # interleaved, the order rotated every repeat
            order = names[r % len(names):] + names[:r % len(names)]
            for v in order:
                times[v].append(timed(fns[v])[0])
        floor = statistics.median(times["bare_gemm"])
        base = results[args.variants[0]]
        for v in args.variants:
            two = run(batches[:2], v, precision)
            rows.append({"name": f"{v}/{precision}", "variant": v, "precision": precision,
                         "seconds": statistics.median(times[v]), "bare_gemm_s": floor,
                         "ratio": statistics.median(times[v]) / floor,
                         "max_abs_diff_vs_first_variant": (results[v] - base).abs().max().item(),
                         "max_abs_diff_vs_float64_2_batches": (two - reference).abs().max().item()})
    kernels = kernel_rows(batches[0], args.repeats)
    print(f"{'variant':<28} {'update+compute':>14} {'x cuBLAS':>9} {'diff':>9} {'vs fp64':>9}")
    for r in rows:
        print(f"{r['name']:<28} {r['seconds'] * 1e3:>12.2f}ms {r['ratio']:>9.2f} "
              f"{r['max_abs_diff_vs_first_variant']:>9.1e} {r['max_abs_diff_vs_float64_2_batches']:>9.1e}")
    for r in kernels:
        print(f"{r['name']:<28} {r['ms']:>12.3f}ms  " + " ".join(f"{k}={v}" for k, v in r.items()
                                                             if k not in ("name", "ms")))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cuda_variants.json")
    with open(path, "w") as f:
        json.dump({"machine": machine_info(dev), "workload": w, "repeats": args.repeats, "rows": rows,
                   "kernels": kernels}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())

"""The precision modes and the user path against the fastest peer, side by side in one process.

    python benchmarks/bench_precision.py [--device cuda] [--repeats 7] [--out benchmarks/results]

Per workload (dense: L=12, N=2048, n=256, d=768; conv: L=12, N=512, n=256, 64x16x16) and
precision (highest, high, medium): ``CKAAccumulator`` update + compute against the bare full
float32 ``torch.bmm`` Grams of the same batches, interleaved, and its CKA error against the
float64 accumulator. Then ``mpruner.analyze`` (hooks, view flatten) against pytorch-cka's
``compute_cka`` hook path on the same replay model. Goals (reported, never asserted):
highest <= 1.0x the bare bmm, high <= 0.6x with error <= 1e-5, medium <= 0.35x with error <= 1e-3,
analyze >= 1.3x faster than pytorch-cka.

Where the CPU has no bfloat16 matrix engine (AMX-BF16 / AVX512-BF16), high and medium are
run with their arithmetic forced on (MPRUNER_CPU_BF16=1): their errors are those of the
matrix engine, their times are not (an emulation on float32 GEMMs), so no speed is recorded
for them. Times are recorded only when the 1-minute load average stays <= 1.5 (shared
machines); the errors always. Writes engine_precision_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

import mpruner
from mpruner.engine import precision as modes
from bench_analysis import machine_info
from bench_engine import HOOK_WORKLOADS, ReplayModel, hook_batches, make_batches, run_gemm, timed  # noqa: E402

WORKLOADS = {"dense": (12, 2048, 256, 768), "conv": (12, 512, 256, 64 * 16 * 16)}
GOALS = {"highest": (1.0, 1e-6), "high": (0.6, 1e-5), "medium": (0.35, 1e-3)}
MAX_LOAD = 1.5
PEER_GOAL = 1.3


def _accumulate(batches, precision):
    acc = mpruner.CKAAccumulator(precision=precision)
    for b in batches:
        acc.update(b)
    return acc.compute()


def how_it_runs(precision: str, device) -> str:
    """"native" (the hardware's own mode), "emulated" (bf16 arithmetic forced on a CPU without
    the matrix engine: exact numerics, meaningless speed) or "fallback" (runs as highest)."""
    if precision == "highest" or torch.device(device).type == "cuda":
        return "native"
    engine = modes.cpu_matrix_engine()
    if (engine.amx_bf16 or engine.avx512_bf16) and engine.bf16:
        return "native"
    return "emulated" if engine.bf16 else "fallback"


def measure_precisions(name, device, precisions, repeats):
    L, N, n, d = WORKLOADS[name]
    batches = make_batches(L, N, n, d, device)
    stacked = [torch.stack(b) for b in batches]
    exact = _accumulate([[x.double() for x in b] for b in batches], "highest").cpu()
    rows = []
    for p in precisions:
        forced = how_it_runs(p, device) == "fallback"  # a CPU without the engine: its numerics, forced on
        if forced:
            os.environ[modes.FORCE_ENV] = "1"
        try:
            ran = how_it_runs(p, device)
            cka = _accumulate(batches, p).cpu()  # also the warm-up (and the Gram strategy's measurement)
            err = float((cka - exact).abs().max())
            run_gemm(stacked)
            eng, gemm = [], []
            load0 = os.getloadavg()
            busy = load0[0] > MAX_LOAD and torch.device(device).type != "cuda"
            timed_speed = ran == "native" and not busy  # a busy machine's times are not recorded
            for r in range(repeats if timed_speed else 0):
                pair = [(eng, lambda: _accumulate(batches, p)), (gemm, lambda: run_gemm(stacked))]
                for out, fn in (pair if r % 2 == 0 else pair[::-1]):
                    out.append(timed(fn, device))
            load1 = os.getloadavg()
        finally:
            if forced:
                os.environ.pop(modes.FORCE_ENV, None)
        quiet = max(load0[0], load1[0]) <= MAX_LOAD or torch.device(device).type == "cuda"
        if ran == "native" and not quiet:
            timed_speed = True  # measured, but not recorded below
        row = {"workload": name, "L": L, "N": N, "n": n, "d": d, "precision": p, "ran": ran, "cka_err": err,
               "goal_ratio": GOALS[p][0], "goal_err": GOALS[p][1], "repeats": repeats if timed_speed else 0,
               "load_average_before": list(load0), "load_average_after": list(load1)}
        if timed_speed and quiet:
            e, g = statistics.median(eng), statistics.median(gemm)
            row.update(engine_s=e, bare_gemm_s=g, ratio=e / g)
        elif timed_speed:
            row["speed_note"] = f"not recorded: load average {max(load0[0], load1[0]):.2f} > {MAX_LOAD}"
        else:
            row["speed_note"] = f"not recorded: {ran} on this processor"
        rows.append(row)
        print(f"{name:<6} {p:<8} {ran:<9} err {err:.1e}  "
              + (f"{row['engine_s'] * 1e3:.1f} ms vs bmm {row['bare_gemm_s'] * 1e3:.1f} ms = {row['ratio']:.2f}x"
                 if "ratio" in row else row["speed_note"]), flush=True)
    return rows


class SameReplay(ReplayModel):
    """The replay model, fed a batch of n copies of the batch index (pytorch-cka wants a
    batch of samples as input), for both sides."""

    def forward(self, x):
        i = torch.tensor(int(x.reshape(-1)[0]))
        for block in self.blocks:
            block(i)
        return i


def _pytorch_cka(model, inputs):
    from cka import compute_cka

    layers = [f"blocks.{l}" for l in range(len(model.blocks))]
    loader = torch.utils.data.DataLoader(inputs, batch_size=None)
    return compute_cka(model, model, loader, layers=layers, device=next(model.buffers()).device, progress=False)[0]


def measure_peer(name, device, repeats):
    """analyze (hooks) against pytorch-cka's compute_cka (hooks) on the same replay model."""
    try:
        import cka  # noqa: F401  (pytorch-cka)
    except ImportError:
        return {"workload": name, "status": "pytorch-cka not installed (pip install --no-deps pytorch-cka==1.1.3)"}
    L, N, n, shape, view = HOOK_WORKLOADS[name]
    store = hook_batches(name, device)
    model = SameReplay(store, L).to(device)
    data = [torch.full((n,), i) for i in range(len(store))]

    def ours():
        return mpruner.analyze(model, data, layers="blocks", view=view, progress=False).cka

    def peer():
        return _pytorch_cka(model, data)

    ours(), peer()  # warm-up
    t = {"analyze": [], "pytorch-cka": []}
    load0 = os.getloadavg()
    busy = load0[0] > MAX_LOAD and torch.device(device).type != "cuda"
    for r in range(0 if busy else repeats):
        pair = [("analyze", ours), ("pytorch-cka", peer)]
        for key, fn in (pair if r % 2 == 0 else pair[::-1]):
            t[key].append(timed(fn, device))
    load1 = os.getloadavg()
    row = {"workload": name, "L": L, "N": N, "n": n, "shape": list(shape), "view": view, "repeats": repeats,
           "goal_speedup": PEER_GOAL, "load_average_before": list(load0), "load_average_after": list(load1),
           "status": "ok"}
    if max(load0[0], load1[0]) <= MAX_LOAD or torch.device(device).type == "cuda":
        a, p = statistics.median(t["analyze"]), statistics.median(t["pytorch-cka"])
        row.update(analyze_s=a, peer_s=p, speedup=p / a)
        print(f"{name:<14} analyze {a * 1e3:.1f} ms  pytorch-cka {p * 1e3:.1f} ms  {p / a:.2f}x", flush=True)
    else:
        row["speed_note"] = f"not recorded: load average {max(load0[0], load1[0]):.2f} > {MAX_LOAD}"
        print(f"{name:<14} {row['speed_note']}", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--precisions", nargs="*", default=list(modes.PRECISIONS))
    parser.add_argument("--peer-workloads", nargs="*", default=["dense-flatten", "conv-flatten"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    machine = machine_info(dev)
    machine["cpu_matrix_engine"] = modes.cpu_matrix_engine().describe()
    warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warnings: every row says how it ran
    rows = [r for w in args.workloads for r in measure_precisions(w, dev, args.precisions, args.repeats)]
    peer = [measure_peer(w, dev, args.repeats) for w in args.peer_workloads]
    machine["load_average_after"] = os.getloadavg()
    machine["gram_strategy"] = {"|".join(map(str, k)): v for k, v in mpruner.engine.gram_strategy.cached().items()}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"engine_precision_{dev.type}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine, "results": rows, "analyze_vs_peer": peer}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())

"""One benchmark task in its own process: ``python -m mpruner.bench.worker SPEC.json OUT.json``.

Tasks: "method" (time one method on one workload, measure its peak memory and error),
"reference" (float64 references), "roofline" (GEMM rate and bandwidth), "profile"
(where mpruner's time goes). The parent (runner.py) enforces the timeout and memory cap;
everything this process can catch becomes a status in OUT.json.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
import traceback
from typing import Dict, List

import torch

from . import measure, refs
from .core import Ctx, Method, sample_units
from .workloads import Workload


MAX_REPEATS = 20


def all_methods() -> Dict[str, Method]:
    from .methods import OWN_METHODS
    from .peers import PEER_METHODS

    return {**OWN_METHODS, **PEER_METHODS}


def _error(res, m: Method, ctx: Ctx, ref, subset: List[int]) -> Dict:
    """Max |method - float64 reference of its estimator| over the entries it computed, and
    for minibatch rows the distance to the minibatch HSIC_1 reference of the same batches."""
    if res.cka is None or ref is None:
        return {}
    out = res.cka.detach().double().cpu()
    kw = {}
    if m.unit == "batches" and ctx.wl.kind == "minibatch":
        kw["batches"] = subset
    elif m.unit == "pairs":
        kw["batches"] = list(range(ctx.wl.num_batches))
    if res.seq_ids is not None:
        kw["seq_ids"] = res.seq_ids
    exp = refs.expected(ref, m.estimator, **kw)
    info = {}
    mask = torch.ones_like(out, dtype=torch.bool)
    if res.pairs is not None:
        mask = torch.zeros_like(out, dtype=torch.bool)
        for i, j in res.pairs:
            mask[i, j] = mask[j, i] = True
        info["err_entries"] = f"{len(res.pairs)} of {len(ctx.pairs)} pairs"
    if exp is not None:
        diff = (out - exp)[mask]
        info["max_err"] = float("nan") if torch.isnan(diff).any() else float(diff.abs().max())
        if torch.isnan(out[mask]).any():
            info["err_note"] = "NaN in the output"
    if ctx.wl.kind == "minibatch" and m.estimator != "minibatch-u":
        mb = refs.expected(ref, "minibatch-u", batches=kw.get("batches", subset))
        info["diff_vs_minibatch_u"] = float((out - mb)[mask].abs().max())
    return info


def _prepare(m: Method, device: torch.device):
    """Imports and thread pools before anything is measured."""
    import importlib

    importlib.import_module("mpruner")  # its import time and memory are not the method's

    if m.peer:
        from .peers import PEERS

        importlib.import_module(PEERS[m.peer].module)
    x = torch.randn(64, 64, device=device)
    torch.mm(x, x)
    measure.sync(device)


def run_method(spec: Dict) -> Dict:
    wl = Workload(**{k: tuple(v) if k == "shape" else v for k, v in spec["workload"].items()})
    device = torch.device(spec["device"])
    m = all_methods()[spec["method"]]
    ref = torch.load(spec["ref_path"], weights_only=True) if spec.get("ref_path") else None  # tensors only, no pickle code
    R, budget = spec["repeats"], spec["budget_s"]
    _prepare(m, device)
    ctx = Ctx(wl, device)
    allu = ctx.all_units(m.unit)
    total = len(allu)
    probe = sample_units(ctx, m.unit, 1 if m.unit != "sequences" else max(2, total // 32))
    loads = [measure.load_average()]
    # The first (cold) run, on a small probe, in a fresh process: its peak memory is exact
    # (nothing freed earlier is still resident). It is also the warm-up.
    cold = measure.MemoryMeter(device)
    with torch.no_grad(), cold:
        res, t_cold = measure.timed(lambda: m.run(ctx, probe), device, ctx.source)
    meter = measure.MemoryMeter(device)
    if t_cold > budget:  # one probe is beyond the budget already: that run is the measurement
        subset, times, fixed_times, note = probe, [t_cold], [res.fixed_s], "single cold run (no warm-up)"
    else:
        note = ""
        with torch.no_grad():
            res, t = measure.timed(lambda: m.run(ctx, probe), device, ctx.source)
        fixed = res.fixed_s
        per_unit = max(t - fixed, 1e-9) / len(probe)
        full = fixed + per_unit * total
        # fast rows get more repeats (up to MAX_REPEATS within a quarter of the budget): the
        # median of a handful of 50 ms runs in a fresh process still swings by 30 %
        k, reps = total, max(R, min(MAX_REPEATS, int(budget / 4 / max(full, 1e-9))))
        if R * full > budget:
            k = max(len(probe), min(total, int((budget / R - fixed) / per_unit)))
            reps = max(1, min(R, int(budget / (fixed + per_unit * k))))
        subset = sample_units(ctx, m.unit, k) if k < total else allu
        times, fixed_times = [], []
        with torch.no_grad():
            for r in range(reps):
                if r == 0:  # may read low (the allocator keeps what the probe freed); max with the cold run
                    with meter:
                        res, t = measure.timed(lambda: m.run(ctx, subset), device, ctx.source)
                else:
                    res, t = measure.timed(lambda: m.run(ctx, subset), device, ctx.source)
                times.append(t)
                fixed_times.append(res.fixed_s)
    loads.append(measure.load_average())
    med = statistics.median(times)
    peaks = {k: max([v for v in (getattr(cold, k), getattr(meter, k)) if v is not None], default=None)
             for k in ("cpu_peak", "cuda_peak")}
    row = {"status": "ok", "time_s": med, "times_s": times, "repeats": len(times),
           "units": m.unit, "units_timed": len(subset), "units_total": total, "extrapolated": len(subset) < total,
           "peak_mem_bytes": peaks["cuda_peak" if device.type == "cuda" else "cpu_peak"],
           "cpu_peak_rss_bytes": peaks["cpu_peak"], "cuda_peak_bytes": peaks["cuda_peak"],
           "peak_mem_exact": cold.exact, "load_avg": loads, "gen_time_s": ctx.source.gen_time}
    if note:
        row["timing_note"] = note
    if len(subset) < total:
        f = statistics.median(fixed_times)
        row["time_s"] = f + (med - f) * total / len(subset)
        row["time_measured_s"] = med
        row["status"] = "extrapolated"
        row["extrapolation"] = (f"timed {len(subset)} of {total} {m.unit}" +
                                (f" (+{f:.2f}s fixed)" if f > 0.01 else "") + f", x{total / len(subset):.1f}")
    if res.note:
        row["note"] = res.note
    row.update(_error(res, m, ctx, ref, subset))
    return row


def run_reference(spec: Dict) -> Dict:
    from .workloads import make_source

    wl = Workload(**{k: tuple(v) if k == "shape" else v for k, v in spec["workload"].items()})
    t = time.perf_counter()
    with torch.no_grad():
        out = refs.compute(make_source(wl, torch.device(spec["device"])), spec.get("full", True))
    torch.save(out, spec["ref_path"])
    return {"status": "ok", "time_s": time.perf_counter() - t, "keys": sorted(out)}


def run_roofline(spec: Dict) -> Dict:
    shapes = [tuple(s) for s in spec.get("shapes", [(256, 768)])]
    return {"status": "ok", **measure.roofline(torch.device(spec["device"]), shapes)}


def run_profile(spec: Dict) -> Dict:
    """torch.profiler over mpruner on (up to 4 batches of) a workload, inputs pre-generated so
    only the CKA work shows; ops grouped into Gram GEMMs, mpruner kernels and the rest."""
    from .methods import mpruner_minibatch, mpruner_tokens

    wl = Workload(**{k: tuple(v) if k == "shape" else v for k, v in spec["workload"].items()})
    device = torch.device(spec["device"])
    ctx = Ctx(wl, device)
    k = min(4, wl.num_batches)
    held = [ctx.source.batch(i) for i in range(k)]
    ctx.source.batch = lambda i: held[i]           # replay the held batches
    fn = mpruner_minibatch if wl.kind == "minibatch" else mpruner_tokens(False)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda"
                                                     else [])
    with torch.no_grad():
        fn(ctx, list(range(k)))
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=acts) as prof:
            fn(ctx, list(range(k)))
            measure.sync(device)
        wall = time.perf_counter() - t0
    cuda = device.type == "cuda"
    rows = []
    for e in prof.key_averages():
        self_t = (getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total) / 1e3
        rows.append({"op": e.key, "calls": e.count, "self_ms": self_t, "cpu_total_ms": e.cpu_time_total / 1e3})
    rows.sort(key=lambda r: -r["self_ms"])
    total = sum(r["self_ms"] for r in rows) or 1.0

    def cat(op):
        if op in ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm") or "gemm" in op.lower():
            return "Gram/HSIC GEMMs"
        if op.startswith("mpruner::"):
            return "mpruner kernels"
        return "other (centering, reductions, copies)"
    groups: Dict[str, float] = {}
    for r in rows:
        groups[cat(r["op"])] = groups.get(cat(r["op"]), 0.0) + r["self_ms"]
    return {"status": "ok", "batches_profiled": k, "wall_s": wall, "timer": "device" if cuda else "cpu",
            "groups_ms": groups, "groups_share": {g: v / total for g, v in groups.items()},
            "top_ops": [r for r in rows[:12]]}


def run_selftest(spec: Dict) -> Dict:
    """Misbehaves on purpose, to test that the parent turns it into a row status."""
    mode = spec["mode"]
    if mode == "hang":
        time.sleep(3600)
    if mode == "crash":
        import os

        os.abort()
    if mode == "alloc":
        hog = [bytearray(b"\x01") * (64 * 2**20) for _ in range(int(spec.get("mib", 4096)) // 64)]
        time.sleep(5)
        return {"status": "ok", "held": len(hog)}
    if mode == "raise":
        raise RuntimeError("self-test failure")
    return {"status": "ok"}


TASKS = {"method": run_method, "reference": run_reference, "roofline": run_roofline, "profile": run_profile,
         "_selftest": run_selftest}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        row = TASKS[spec["task"]](spec)
    except torch.cuda.OutOfMemoryError as exc:
        traceback.print_exc()
        row = {"status": "oom (CUDA)", "error": str(exc).splitlines()[0]}
    except MemoryError as exc:
        traceback.print_exc()
        row = {"status": "oom", "error": repr(exc)}
    except Exception as exc:  # a peer's failure is a row, not a dead suite
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        row = {"status": "error", "error": msg}
    with open(out_path, "w") as f:
        json.dump(row, f, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    return 0


if __name__ == "__main__":
    sys.exit(main())

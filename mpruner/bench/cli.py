"""``mpruner bench``: the benchmark suite from the command line.

    mpruner bench                                   # CPU: dense, conv, tokens + N/L/d sweeps
    mpruner bench --peers all --out benchmarks/results
    mpruner bench --device cuda --workload gpu,tokens
    mpruner bench --workload dense --peers none --repeats 3
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import List

GROUPS = {"headline": None, "sweeps": ["sweep-N", "sweep-L", "sweep-d"]}
# cka-analyzer is left out: its all-samples N x N float64 centering costs hours per pair at N = 8192.
SWEEP_METHODS = ["mpruner", "torch baseline", "gram floor", "pytorch-cka"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark mpruner's CKA against other CKA libraries and the hardware",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="all",
                   help="comma list of dense, conv, tokens, gpu, dense-small, tokens-small, sweep-N, sweep-L, "
                        "sweep-d, or the groups headline, sweeps, all (default: all = headline + sweeps)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--peers", default="installed",
                   help="installed (default: those already installed), all (installs missing ones with "
                        "pip --no-deps first), none, or a comma list of torch-cka, cka-pytorch, pytorch-cka, "
                        "ckatorch, cka-analyzer")
    p.add_argument("--out", default="mpruner-bench", help="directory for the JSON and PNG files")
    p.add_argument("--tag", default=None, help="file name prefix (default: cpu or gpu)")
    p.add_argument("--methods", default=None, help="comma list: run only these methods (and peers)")
    p.add_argument("--sweep-methods", default=",".join(SWEEP_METHODS),
                   help=f"methods in the scaling sweeps (default: {','.join(SWEEP_METHODS)})")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed repeats after a warm-up, the median is reported (the sweeps use at most 3)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the timed repeats of one row; slower methods are timed on a subset of "
                        "batches / pairs / sequences and extrapolated (default 15)")
    p.add_argument("--timeout", type=float, default=600, help="hard limit per subprocess (s)")
    p.add_argument("--mem-cap", type=float, default=8,
                   help="cap on the resident (host) memory of each subprocess, GiB (GPU memory is capped by the GPU)")
    p.add_argument("--quiet-wait", type=float, default=60,
                   help="CPU: before each row wait up to this many seconds for the other processes' CPU use "
                        "to drop below 25%% (a shared machine's noise); 0 to skip")
    p.add_argument("--retry-noisy", type=int, default=1,
                   help="CPU: measure a row again (up to this many times) when other processes used more than "
                        "25%% of the CPU while it ran, keeping the quieter measurement")
    p.add_argument("--processes", type=int, default=3,
                   help="headline rows that take under 5 s: report the median over this many fresh processes "
                        "(the sweeps use one)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown of mpruner")
    p.add_argument("--work-dir", default=None, help="keep references and subprocess logs here")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: rebuild the tables, goals and plots from the JSON files in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _workloads(arg: str, device_type: str) -> List[str]:
    from .workloads import HEADLINE

    out: List[str] = []
    for w in arg.split(","):
        w = w.strip()
        if w in ("all", "headline"):
            out += HEADLINE[device_type]
        if w in ("all", "sweeps"):
            out += GROUPS["sweeps"]
        if w not in ("all", "headline", "sweeps"):
            out.append(w)
    return list(dict.fromkeys(out))


def _peers(arg: str) -> List[str]:
    from .peers import PEERS, install, installed_version

    if arg == "none":
        return []
    if arg == "installed":
        return [p for p in PEERS if installed_version(p) is not None]
    names = list(PEERS) if arg == "all" else [p.strip() for p in arg.split(",") if p.strip()]
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {', '.join(PEERS)}")
    install(names)
    return names


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # so that the running task is killed too


def replot(args, tag: str) -> int:
    """Tables, goals and plots again from the JSON files of an earlier run."""
    import glob
    import json

    results, sweeps, meta = {}, {}, None
    for path in sorted(glob.glob(os.path.join(args.out, f"{tag}_*.json"))):
        with open(path) as f:
            d = json.load(f)
        if "rows" in d:
            results[d["workload"]["name"]] = d
        elif "points" in d:
            sweeps[d["axis"]] = d["points"]
        meta = meta or d
    if meta is None:
        raise SystemExit(f"no {tag}_*.json in {args.out}")
    order = ["dense", "conv", "tokens", "gpu"]
    results = dict(sorted(results.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    _finish(args, tag, results, sweeps, meta, None)
    return 0


def _finish(args, tag, results, sweeps, meta, t0):
    from . import report

    machine = meta["machine"]
    dev_type = "cuda" if machine.get("gpu") else "cpu"
    goals = report.evaluate_goals(results, dev_type)
    for res in results.values():
        print(f"\n== {res['workload']['name']}: {res['workload']['description']}\n" + report.table(res))
    if results:
        summary = {k: meta[k] for k in ("machine", "config", "roofline") if k in meta}
        summary.update(goals=goals, elapsed_s=None if t0 is None else time.perf_counter() - t0, headline={
            w: {"workload": r["workload"], "profile": r.get("profile"), "rows": [
                {k: row.get(k) for k in ("method", "estimator", "status", "time_s", "ratio_vs_mpruner", "max_err",
                                         "peak_mem_bytes", "roofline_fraction", "extrapolation")}
                for row in r["rows"]]} for w, r in results.items()})
        report.write_json(os.path.join(args.out, f"{tag}_summary.json"), summary)
        where = machine.get("gpu") or machine.get("cpu")
        report.plot_headline(results, os.path.join(args.out, f"{tag}_headline.png"),
                             f"CKA on {where} ({machine['torch_threads']} threads)")
        with open(os.path.join(args.out, f"{tag}_tables.md"), "w") as f:
            f.write(report.markdown_report(results, goals, machine))
    if sweeps:
        report.plot_scaling(sweeps, os.path.join(args.out, f"{tag}_scaling.png"),
                            f"scaling on {machine.get('gpu') or machine.get('cpu')}")
    if goals:
        print("\ngoals (measured, not asserted):")
        for g in goals:
            print(f"  {g['workload']:<7} vs {g.get('other', g['against']):<20} {g['verdict']}")
            if g.get("met") is False:
                print(report.profile_text(results[g["workload"]].get("profile")))


def run(args) -> int:
    import signal

    import torch

    from . import measure, report, runner
    from .workloads import WORKLOADS, sweep_workloads

    tag = args.tag or ("gpu" if args.device == "cuda" else "cpu")
    if args.replot:
        return replot(args, tag)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    if args.device == "cuda":
        import mpruner

        if not mpruner.cuda_built():
            print("warning: mpruner was built without its CUDA kernels; its rows will fail on --device cuda "
                  "(rebuild with FORCE_CUDA=1 pip install --no-build-isolation -e .)")
    dev_type = args.device
    names = _workloads(args.workload, dev_type)
    bad = [w for w in names if w not in WORKLOADS and w not in GROUPS["sweeps"]]
    if bad:
        raise SystemExit(f"unknown workloads {bad}; choose from {', '.join(list(WORKLOADS) + GROUPS['sweeps'])}")
    cfg = runner.Config(device=args.device, repeats=args.repeats,
                        budget_s=args.budget or 15.0, timeout_s=args.timeout,
                        mem_cap_bytes=int(args.mem_cap * 2**30),
                        quiet_wait_s=args.quiet_wait, retry_noisy=args.retry_noisy, processes=args.processes,
                        peers=_peers(args.peers), work_dir=args.work_dir or "", verbose=not args.quiet)
    only = None if args.methods is None else [m.strip() for m in args.methods.split(",")]
    sweep_only = [m.strip() for m in args.sweep_methods.split(",")]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    machine = measure.machine_info(torch.device(args.device))
    print(f"mpruner bench on {machine.get('gpu') or machine.get('cpu')} ({machine['cpu_count']} cores), "
          f"torch {machine['torch']}, commit {(machine['git_commit'] or '?')[:10]}"
          f"{' + uncommitted changes to ' + ', '.join(machine['git_dirty']) if machine['git_dirty'] else ''}; "
          f"peers: {', '.join(cfg.peers) or 'none'}")
    print(f"work dir (references, logs): {cfg.work_dir}")

    headline = [w for w in names if w in WORKLOADS]
    sweeps = [w.split("-")[1] for w in names if w in GROUPS["sweeps"]]
    shapes = {(WORKLOADS[w].n, WORKLOADS[w].d) for w in headline if WORKLOADS[w].kind == "minibatch"}
    roof = runner.roofline(cfg, sorted(shapes) or [(256, 768)])
    meta = {"machine": machine, "config": {k: v for k, v in vars(cfg).items() if k not in ("work_dir", "verbose")},
            "roofline": roof}

    results = {}
    for w in headline:
        res = runner.run_workload(cfg, WORKLOADS[w], only, profile=not args.no_profile)
        report.add_roofline(res, roof)
        results[w] = res
        report.write_json(os.path.join(args.out, f"{tag}_{w}.json"), {**meta, **res})
    sweep_results = {}
    for axis in sweeps:
        pts = []
        sweep_cfg = dataclasses.replace(cfg, repeats=min(cfg.repeats, 3), processes=1)
        for wl in sweep_workloads(dev_type, axis):
            res = runner.run_workload(sweep_cfg, wl, sweep_only if only is None else only)
            report.add_roofline(res, roof)
            pts.append(res)
        sweep_results[axis] = pts
        report.write_json(os.path.join(args.out, f"{tag}_sweep_{axis}.json"), {**meta, "axis": axis, "points": pts})

    _finish(args, tag, results, sweep_results, meta, t0)
    print(f"\nwrote {args.out}/{tag}_*.json, *.png in {time.perf_counter() - t0:.0f} s")
    return 0

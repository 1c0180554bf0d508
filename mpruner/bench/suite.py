"""The benchmark suite's run: every (workload, method) pair measured, then tables, goals, plots.

``run(args)`` takes the options of ``mpruner bench`` (see ``mpruner bench --help``); ``replot``
writes the tables and plots again from an earlier run's JSON files.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional

GROUPS = {"headline": None, "sweeps": ["sweep-N", "sweep-L", "sweep-d"]}
# cka-analyzer is left out: its all-samples N x N float64 centering costs hours per pair at N = 8192.
SWEEP_METHODS = ["mpruner", "torch baseline", "gram floor", "pytorch-cka"]


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
        raise SystemExit(f"mpruner bench: error: --peers: unknown {unknown}; choose from installed, all, none, or "
                         f"{', '.join(PEERS)}")
    install(names)
    return names


QUICK_WORKLOADS = "dense-small,tokens-small"
QUICK_METHODS = ["mpruner", "mpruner token_cka", "mpruner cosine", "torch cosine", "torch baseline", "torch batched",
                 "gram floor", "pytorch-cka",
                 "pytorch-cka per sequence"]


def precisions(arg: str, device: str) -> List[str]:
    """``--precision``: the GEMM modes of mpruner's rows ("auto": highest and what the
    hardware runs natively); an unknown name is refused with the list."""
    from mpruner.engine.precision import PRECISIONS, canonical, cpu_matrix_engine

    if arg == "auto":
        native = device == "cuda" or cpu_matrix_engine().bf16
        return list(PRECISIONS) if native else ["highest"]
    try:
        names = [canonical(p.strip()) for p in arg.split(",") if p.strip()]
    except ValueError as e:
        raise SystemExit(f"mpruner bench: error: --precision: {e}") from None
    if not names:
        raise SystemExit("mpruner bench: error: --precision is empty; e.g. --precision highest,high")
    return list(dict.fromkeys(names))


def method_names(arg: str) -> List[str]:
    """``--methods``: the named rows, every name checked against the suite's (with a suggestion)."""
    import difflib

    from .worker import all_methods

    known = list(all_methods())
    names = [m.strip() for m in arg.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        hints = [f"{m!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(m, known, 1)) else repr(m)
                 for m in unknown]
        raise SystemExit(f"mpruner bench: error: --methods: unknown {', '.join(hints)}; choose from "
                         f"{', '.join(known)}")
    if not names:
        raise SystemExit("mpruner bench: error: --methods is empty; name rows, e.g. --methods mpruner,pytorch-cka")
    return names


def _with_named_peers(names: Optional[List[str]], peers: List[str], arg: str) -> List[str]:
    """Peers that ``--methods`` names are run even if ``--peers`` left them out (their row
    then says when the package is not installed) instead of silently vanishing."""
    from .worker import all_methods

    methods = all_methods()
    extra = [methods[m].peer for m in names or [] if methods[m].peer and methods[m].peer not in peers]
    if extra:
        print(f"mpruner bench: --methods names {', '.join(dict.fromkeys(extra))}, which --peers {arg} leaves out; "
              "running it")
    return list(dict.fromkeys(peers + extra))


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # so that the running task is killed too


def replot(args, tag: str) -> int:
    """Tables, goals and plots again from the JSON files of an earlier run."""
    import glob
    import json

    results, sweeps, meta, elapsed = {}, {}, None, None
    for path in sorted(glob.glob(os.path.join(args.out, f"{tag}_*.json"))):
        with open(path) as f:
            d = json.load(f)
        if "rows" in d:
            results[d["workload"]["name"]] = d
        elif "points" in d:
            sweeps[d["axis"]] = d["points"]
        elif "elapsed_s" in d:
            elapsed = d["elapsed_s"]  # the measuring run's, kept
        meta = meta or d
    if meta is None:
        raise SystemExit(f"no {tag}_*.json in {args.out}")
    order = ["dense", "conv", "tokens", "gpu"]
    results = dict(sorted(results.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    _finish(args, tag, results, sweeps, {**meta, "elapsed_s": elapsed}, None)
    return 0


def _finish(args, tag, results, sweeps, meta, t0):
    from . import tables

    machine = meta["machine"]
    dev_type = "cuda" if machine.get("gpu") else "cpu"
    goals = tables.evaluate_goals(results, dev_type)
    for res in results.values():
        print(f"\n== {res['workload']['name']}: {res['workload']['description']}\n" + tables.table(res))
    if results:
        summary = {k: meta[k] for k in ("machine", "config", "roofline") if k in meta}
        summary.update(goals=goals, elapsed_s=meta.get("elapsed_s") if t0 is None else time.perf_counter() - t0,
                       headline={
            w: {"workload": r["workload"], "profile": r.get("profile"), "rows": [
                {k: row.get(k) for k in ("method", "estimator", "status", "time_s", "ratio_vs_mpruner", "max_err",
                                         "peak_mem_bytes", "roofline_fraction", "extrapolation")}
                for row in r["rows"]]} for w, r in results.items()})
        tables.write_json(os.path.join(args.out, f"{tag}_summary.json"), summary)
        where = machine.get("gpu") or machine.get("cpu")
        tables.plot_headline(results, os.path.join(args.out, f"{tag}_headline.png"),
                             f"CKA on {where} ({machine['torch_threads']} threads)")
        with open(os.path.join(args.out, f"{tag}_tables.md"), "w") as f:
            f.write(tables.markdown_report(results, goals, machine))
    if sweeps:
        tables.plot_scaling(sweeps, os.path.join(args.out, f"{tag}_scaling.png"),
                            f"scaling on {machine.get('gpu') or machine.get('cpu')}")
    if goals:
        print("\ngoals (measured, not asserted):")
        for g in goals:
            print(f"  {g['workload']:<7} vs {g.get('other', g['against']):<20} {g['verdict']}")
            if g.get("met") is False:
                print(tables.profile_text(results[g["workload"]].get("profile")))


def run(args) -> int:
    import signal

    import torch

    from . import measure, runner, tables
    from .workloads import WORKLOADS, sweep_workloads

    if args.quick:
        if args.workload == "all":
            args.workload = QUICK_WORKLOADS
        if args.methods is None:
            from .peers import installed_version
            from .worker import all_methods

            methods = all_methods()  # a peer row only where its package is installed
            args.methods = ",".join(m for m in QUICK_METHODS
                                    if not methods[m].peer or installed_version(methods[m].peer) is not None)
        args.repeats, args.processes, args.quiet_wait, args.retry_noisy = min(args.repeats, 3), 1, 0, 0
        args.no_profile, args.budget = True, args.budget or 3.0
    tag = args.tag or ("gpu" if args.device == "cuda" else "cpu") + ("-quick" if args.quick else "")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"mpruner bench: error: --out {args.out!r} is an existing file, not a directory")
    if args.replot:
        return replot(args, tag)
    only = None if args.methods is None else method_names(args.methods)
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
        raise SystemExit(f"mpruner bench: error: --workload: unknown {bad}; choose from "
                         f"{', '.join(list(WORKLOADS) + GROUPS['sweeps'] + list(GROUPS) + ['all'])}")
    sweep_only = method_names(args.sweep_methods)
    peers = _with_named_peers(only, _peers(args.peers), args.peers)
    cfg = runner.Config(device=args.device, repeats=args.repeats,
                        budget_s=args.budget or 15.0, timeout_s=args.timeout,
                        mem_cap_bytes=int(args.mem_cap * 2**30),
                        quiet_wait_s=args.quiet_wait, retry_noisy=args.retry_noisy, processes=args.processes,
                        peers=peers, precisions=precisions(getattr(args, "precision", "auto"), args.device),
                        work_dir=args.work_dir or "", verbose=not args.quiet)
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
    roof = ({"status": "skipped (--quick)"} if args.quick else  # the roofline costs more than the quick rows
            runner.roofline(cfg, sorted(shapes) or [(256, 768)]))
    meta = {"machine": machine, "config": {k: v for k, v in vars(cfg).items() if k not in ("work_dir", "verbose")},
            "roofline": roof}

    results = {}
    for w in headline:
        res = runner.run_workload(cfg, WORKLOADS[w], only, profile=not args.no_profile)
        tables.add_roofline(res, roof)
        results[w] = res
        tables.write_json(os.path.join(args.out, f"{tag}_{w}.json"), {**meta, **res})
    sweep_results = {}
    for axis in sweeps:
        pts = []
        sweep_cfg = dataclasses.replace(cfg, repeats=min(cfg.repeats, 3), processes=1)
        for wl in sweep_workloads(dev_type, axis):
            res = runner.run_workload(sweep_cfg, wl, sweep_only if only is None else only)
            tables.add_roofline(res, roof)
            pts.append(res)
        sweep_results[axis] = pts
        tables.write_json(os.path.join(args.out, f"{tag}_sweep_{axis}.json"), {**meta, "axis": axis, "points": pts})

    _finish(args, tag, results, sweep_results, meta, t0)
    print(f"\nwrote {args.out}/{tag}_*.json, *.png in {time.perf_counter() - t0:.0f} s")
    return 0

"""Runs the suite: every task in a subprocess with a timeout and a memory cap.

A crash, an out-of-memory kill or a hang of one library becomes that row's status; the
suite goes on.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import measure
from .workloads import Workload, essential_work

GIB = 2**30
NOISY = 0.25


@dataclass
class Config:
    device: str = "cpu"
    repeats: int = 5
    budget_s: float = 30.0          # timed phase of one row; slower methods are timed on a subset
    timeout_s: float = 600.0        # hard limit of one subprocess
    mem_cap_bytes: int = 8 * GIB    # resident memory of one subprocess (CPU)
    quiet_wait_s: float = 0.0       # before each row, wait up to this long for other work to stop
    retry_noisy: int = 0            # rerun a row measured while others used > NOISY of the CPU
    processes: int = 1              # fast rows: median over this many fresh processes
    peers: List[str] = field(default_factory=list)
    precisions: List[str] = field(default_factory=lambda: ["highest"])  # mpruner rows' GEMM modes
    work_dir: str = ""
    verbose: bool = True

    def __post_init__(self):
        if not self.work_dir:
            self.work_dir = tempfile.mkdtemp(prefix="mpruner-bench-")
        os.makedirs(os.path.join(self.work_dir, "logs"), exist_ok=True)


def _kill(p: subprocess.Popen):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        p.kill()
    p.wait()


def spawn(cfg: Config, spec: Dict, tag: str, timeout: Optional[float] = None) -> Dict:
    """Runs one worker task; returns its row, or a status saying how it died."""
    timeout = timeout or cfg.timeout_s
    base = os.path.join(cfg.work_dir, tag.replace(" ", "_").replace("/", "_"))
    spec_path, out_path, log_path = base + ".spec.json", base + ".out.json", os.path.join(
        cfg.work_dir, "logs", os.path.basename(base) + ".log")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    if os.path.exists(out_path):
        os.remove(out_path)
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    t0 = time.perf_counter()
    peak, status = 0, None
    cpu0, ru0 = _cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "mpruner.bench.worker", spec_path, out_path],
                             stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while p.poll() is None:
                rss = measure.rss_bytes(p.pid) or 0
                peak = max(peak, rss)
                if cfg.mem_cap_bytes and rss > cfg.mem_cap_bytes:
                    _kill(p)
                    status = f"oom: killed at the {cfg.mem_cap_bytes / GIB:.3g} GiB memory cap"
                elif time.perf_counter() - t0 > timeout:
                    _kill(p)
                    status = f"timeout: killed after {timeout:.0f} s"
                else:
                    time.sleep(0.05)
        except BaseException:  # interrupted: don't leave the task running
            _kill(p)
            raise
    wall = time.perf_counter() - t0
    others = _others_busy(cpu0, ru0)
    if status is None and os.path.exists(out_path):
        with open(out_path) as f:
            row = json.load(f)
    else:
        if status is None:
            rc = p.returncode
            status = (f"crashed: killed by signal {-rc}" + (" (out of memory?)" if rc == -signal.SIGKILL else "")
                      if rc < 0 else f"crashed: exit code {rc}")
        row = {"status": status, "error": _tail(log_path)}
    row["subprocess_wall_s"] = wall
    if others is not None:
        row["others_cpu_busy"] = others
    row["subprocess_peak_rss_bytes"] = peak
    row["log"] = log_path
    return row


def _cpu_snapshot():
    try:
        return measure._cpu_times()
    except (OSError, ValueError, IndexError):
        return None


def _others_busy(cpu0, ru0):
    """Fraction of the machine's CPU time used by other processes while the task ran (its
    own CPU time, from the reaped child's rusage, taken out): the noise of that row."""
    cpu1, ru1 = _cpu_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu0 is None or cpu1 is None:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    total = (cpu1[0] - cpu0[0]) / tck
    busy = total - (cpu1[1] - cpu0[1]) / tck
    mine = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return None if total <= 0 else min(1.0, max(0.0, (busy - mine) / total))


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path) as f:
            lines = [l.rstrip() for l in f if l.strip()]
        return " | ".join(lines[-n:])[-400:]
    except OSError:
        return ""


def say(cfg: Config, *a):
    if cfg.verbose:
        print(*a, flush=True)


def roofline(cfg: Config, shapes) -> Dict:
    say(cfg, f"measuring the {cfg.device} roofline (GEMM rate, bandwidth) ...")
    if cfg.quiet_wait_s > 0 and cfg.device == "cpu":
        measure.wait_quiet(cfg.quiet_wait_s)
    return spawn(cfg, {"task": "roofline", "device": cfg.device, "shapes": [list(s) for s in shapes]},
                 f"roofline_{cfg.device}")


def methods_for(wl: Workload, cfg: Config, names: Optional[List[str]] = None):
    from .worker import all_methods

    out = []
    for m in all_methods().values():
        if wl.kind not in m.kinds:
            continue
        if names is not None and m.name not in names:
            continue
        if m.peer is not None and m.peer not in cfg.peers:
            continue
        if m.cpu_only and cfg.device != "cpu" and names is None:
            continue  # NumPy on the host: a GPU run would spend its time on the CPU
        if m.precision not in cfg.precisions and (names is None or m.name not in names):
            continue  # mpruner's other GEMM modes: mpruner bench --precision
        out.append(m)
    # mpruner's full-batch row is there to compare with the peers of that estimator
    if names is None and not any(m.group == "peer" and m.estimator == "full-b" for m in out):
        out = [m for m in out if not (m.group == "mpruner" and m.estimator == "full-b")]
    return out


def run_workload(cfg: Config, wl: Workload, names: Optional[List[str]] = None, profile: bool = False) -> Dict:
    """All rows of one workload, ratios and the roofline-free parts of the report."""
    from .peers import NOT_APPLICABLE, installed_version
    from .refs import ESTIMATORS

    methods = methods_for(wl, cfg, names)
    need_full = any(m.estimator == "full-b" for m in methods)
    ref_path = os.path.join(cfg.work_dir, f"ref_{wl.name}.pt")
    say(cfg, f"\n== {wl.name}: {wl.describe()} [{cfg.device}]")
    spec_wl = wl.to_dict()
    for k in ("d", "num_batches", "description"):
        spec_wl.pop(k)
    ref = spawn(cfg, {"task": "reference", "workload": spec_wl, "device": cfg.device, "ref_path": ref_path,
                      "full": need_full}, f"ref_{wl.name}", timeout=max(cfg.timeout_s, 1800))
    say(cfg, f"   float64 reference: {ref['status']} ({ref.get('time_s', 0):.1f} s)")
    have_ref = ref["status"] == "ok"
    rows = []
    for m in methods:
        row = {"method": m.name, "group": m.group, "estimator": m.estimator, "estimator_desc": ESTIMATORS[m.estimator],
               "notes": m.notes, "precision": m.precision}
        if m.cpu_only and cfg.device != "cpu":
            row["notes"] += " (computes on the CPU)"
        if m.peer:
            ver = installed_version(m.peer)
            row["peer"] = f"{m.peer}=={ver}" if ver else m.peer
            if ver is None:
                row["status"] = "not installed (mpruner bench --peers all installs it)"
                rows.append(row)
                say(cfg, f"   {m.name:<28} {row['status']}")
                continue
        if cfg.quiet_wait_s > 0 and cfg.device == "cpu":
            row["cpu_busy_before"] = measure.wait_quiet(cfg.quiet_wait_s)
        spec = {"task": "method", "workload": spec_wl, "device": cfg.device, "method": m.name,
                "ref_path": ref_path if have_ref else None, "repeats": cfg.repeats, "budget_s": cfg.budget_s}
        meta = dict(row)
        row.update(spawn(cfg, spec, f"{wl.name}_{m.name}"))
        for attempt in range(cfg.retry_noisy if cfg.device == "cpu" else 0):
            if not ok(row) or (row.get("others_cpu_busy") or 0) <= NOISY:
                break
            say(cfg, "   " + one_line(row) + "  -> noisy, measuring again")
            busy = measure.wait_quiet(max(cfg.quiet_wait_s, 60))
            again = spawn(cfg, spec, f"{wl.name}_{m.name}_again{attempt + 1}")
            if ok(again) and (again.get("others_cpu_busy") or 0) < row["others_cpu_busy"]:
                row = {**meta, **again, "cpu_busy_before": busy, "remeasured": attempt + 1,
                       "first_measurement": {k: row.get(k) for k in ("time_s", "others_cpu_busy")}}
        if cfg.processes > 1 and ok(row) and not row.get("extrapolated") and row["time_s"] * row["repeats"] < 5:
            # The same row varies by up to 1.5x from one fresh process to the next (where the
            # allocator's pages land): report the median over a few processes.
            meds = [row["time_s"]]
            for p in range(2, cfg.processes + 1):
                again = spawn(cfg, spec, f"{wl.name}_{m.name}_process{p}")
                if ok(again):
                    meds.append(again["time_s"])
            row["process_medians_s"] = meds
            row["time_s"] = statistics.median(meds)
        rows.append(row)
        say(cfg, "   " + one_line(row))
    for (peer, kind), why in NOT_APPLICABLE.items():
        if kind == wl.kind and peer in cfg.peers and (names is None or peer in names):
            rows.append({"method": peer, "group": "peer", "peer": peer, "estimator": "none", "status": "n/a",
                         "notes": why})
    add_ratios(rows, wl)
    out = {"workload": wl.to_dict(), "device": cfg.device, "reference": ref, "rows": rows,
           "work": essential_work(wl, _token_source(wl))}
    if profile:
        say(cfg, "   profiling mpruner ...")
        out["profile"] = spawn(cfg, {"task": "profile", "workload": spec_wl, "device": cfg.device},
                               f"profile_{wl.name}")
    return out


def _token_source(wl: Workload):
    if wl.kind != "tokens":
        return None
    from .workloads import TokenSource

    return TokenSource(wl, "cpu")  # lengths only; nothing is generated


def ok(row) -> bool:
    return row.get("status") in ("ok", "extrapolated") and row.get("time_s") is not None


def add_ratios(rows: List[Dict], wl: Workload):
    """time / mpruner's time: against the default mpruner row, and against the mpruner row
    computing the same estimator where there is one."""
    default = "mpruner" if wl.kind == "minibatch" else "mpruner token_cka"
    # The basis of an estimator is mpruner's row of it at the default precision (the other
    # precisions' rows are compared with it too).
    by_est = {r["estimator"]: r for r in rows
              if r["group"] == "mpruner" and ok(r) and r.get("precision", "highest") == "highest"}
    base = next((r for r in rows if r["method"] == default and ok(r)), None)
    for r in rows:
        if not ok(r):
            continue
        if base is not None:
            r["ratio_vs_mpruner"] = r["time_s"] / base["time_s"]
        same = by_est.get(r["estimator"])
        if same is not None:
            r["ratio_vs_mpruner_same_estimator"] = r["time_s"] / same["time_s"]
            r["ratio_basis"] = same["method"]


def one_line(row: Dict) -> str:
    from .tables import fmt_bytes, fmt_time

    s = f"{row['method']:<28} {row['status']:<13}"
    if ok(row):
        s += f" {fmt_time(row['time_s']):>9}  peak {fmt_bytes(row.get('peak_mem_bytes')):>9}"
        if row.get("max_err") is not None:
            s += f"  err {row['max_err']:.1e}"
        if row.get("extrapolation"):
            s += f"  [{row['extrapolation']}]"
        if row.get("process_medians_s"):
            s += "  [median of processes: " + ", ".join(fmt_time(t) for t in row["process_medians_s"]) + "]"
        if row.get("others_cpu_busy") is not None:
            s += f"  (others {100 * row['others_cpu_busy']:.0f}% CPU)"
    elif row.get("error"):
        s += f"  {row['error'][:150]}"
    return s

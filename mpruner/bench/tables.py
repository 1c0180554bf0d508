"""Tables, goals, JSON and plots of a benchmark run."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

# The speed goals: measured and reported, never asserted.
GOALS = {
    "cpu": [
        {"workload": "dense", "against": "fastest peer", "min_speedup": 5.0},
        {"workload": "conv", "against": "fastest peer", "min_speedup": 3.0},
        {"workload": "tokens", "against": "per-sequence loop", "min_speedup": 20.0},
    ],
    "cuda": [
        {"workload": "gpu", "against": "fastest peer", "min_speedup": 20.0},
        {"workload": "tokens", "against": "per-sequence loop", "min_speedup": 100.0},
        {"workload": "gpu", "against": "gram floor", "max_ratio": 1.2},
    ],
}


def fmt_time(t: Optional[float]) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    return f"{t * 1e3:.1f} ms"


def fmt_ratio(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_bytes(b: Optional[float]) -> str:
    if b is None:
        return "-"
    for unit, s in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if b >= unit:
            return f"{b / unit:.1f} {s}" if b < 100 * unit else f"{b / unit:.0f} {s}"
    return f"{b:.0f} B"


def _ok(r):
    return r.get("status") in ("ok", "extrapolated") and r.get("time_s") is not None


def add_roofline(result: Dict, roof: Optional[Dict]):
    """Each row's time against the hardware limit: max(essential flops / measured peak GEMM
    rate, activation bytes / measured bandwidth) / time."""
    if not roof or roof.get("status") != "ok":
        return
    w = result["work"]
    bw = w["bytes"] / roof["bandwidth_bytes_per_s"]
    t_min = max(w["flops"] / roof["gemm_peak_flops"], bw)
    t_gram = max(w["gram_flops"] / roof["gemm_peak_flops"], bw)   # the floor does no HSIC
    result["roofline_time_s"] = t_min
    for r in result["rows"]:
        if _ok(r):
            r["roofline_fraction"] = (t_gram if r.get("estimator") == "none" else t_min) / r["time_s"]


def evaluate_goals(results: Dict[str, Dict], device_type: str) -> List[Dict]:
    out = []
    for g in GOALS.get(device_type, []):
        res = results.get(g["workload"])
        item = dict(g)
        if res is None:
            item["verdict"] = "not run"
            out.append(item)
            continue
        rows = res["rows"]
        default = "mpruner" if res["workload"]["kind"] == "minibatch" else "mpruner token_cka"
        mp = next((r for r in rows if r["method"] == default and _ok(r)), None)
        if g["against"] == "fastest peer":
            cands = [r for r in rows if r["group"] == "peer" and _ok(r)]
        else:
            cands = [r for r in rows if r["method"] == g["against"] and _ok(r)]
        if mp is None or not cands:
            item["verdict"] = "not measured"
            out.append(item)
            continue
        other = min(cands, key=lambda r: r["time_s"])
        item.update(mpruner_s=mp["time_s"], other=other["method"], other_s=other["time_s"],
                    other_extrapolated=other.get("status") == "extrapolated")
        if "min_speedup" in g:
            sp = other["time_s"] / mp["time_s"]
            item["speedup"] = sp
            met = sp >= g["min_speedup"]
            item["verdict"] = (f"met: {sp:.1f}x >= {g['min_speedup']:g}x" if met else
                               f"missed: {sp:.1f}x < {g['min_speedup']:g}x (short by {g['min_speedup'] / sp:.2f}x)")
        else:
            ratio = mp["time_s"] / other["time_s"]
            item["ratio"] = ratio
            met = ratio <= g["max_ratio"]
            item["verdict"] = (f"met: {ratio:.2f}x <= {g['max_ratio']:g}x" if met else
                               f"missed: {ratio:.2f}x > {g['max_ratio']:g}x (over by {ratio / g['max_ratio']:.2f}x)")
        item["met"] = met
        out.append(item)
    return out


def display_ratio(r: Dict):
    """(time / mpruner's time, basis method, whether it is the fallback basis) of one row: the
    one computation every table and plot shows. The basis is mpruner's row of the same
    estimator where there is one, else the workload's default mpruner row (marked *)."""
    same = r.get("ratio_vs_mpruner_same_estimator")
    if same is not None:
        return same, r.get("ratio_basis"), False
    return r.get("ratio_vs_mpruner"), None, r.get("ratio_vs_mpruner") is not None


def table(result: Dict) -> str:
    rows = result["rows"]
    head = ["method", "estimator", "status", "time", "x mpruner", "max err", "peak mem", "roofline", "notes"]
    lines = []
    for r in rows:
        ratio, _, fallback = display_ratio(r)
        mark = "*" if fallback else ""
        err = r.get("max_err")
        notes = r.get("extrapolation", "")
        if r.get("status") not in ("ok", "extrapolated"):
            notes = (r.get("error") or r.get("notes") or "")[:90]
        elif r.get("err_note"):
            notes = (notes + "; " if notes else "") + r["err_note"]
        if (r.get("others_cpu_busy") or 0) > 0.25:
            notes = (notes + "; " if notes else "") + f"noisy: other processes used {100 * r['others_cpu_busy']:.0f}% CPU"
        lines.append([
            r["method"], r.get("estimator", ""), r.get("status", "")[:40], fmt_time(r.get("time_s")),
            "-" if ratio is None else f"{ratio:.2f}{mark}",
            "-" if err is None else f"{err:.1e}", fmt_bytes(r.get("peak_mem_bytes")),
            "-" if r.get("roofline_fraction") is None else f"{100 * r['roofline_fraction']:.0f}%", notes])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(x).ljust(w) for x, w in zip(l, widths)).rstrip() for l in lines]
    return "\n".join(out)


def markdown_table(result: Dict) -> str:
    """The headline table as Markdown (for the README)."""
    out = ["| method | estimator | time | × mpruner | max abs err | peak mem | notes |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        ratio, basis, fallback = display_ratio(r)
        rtxt = fmt_ratio(ratio) + ("*" if fallback else "")
        if basis not in (None, "mpruner", "mpruner token_cka", r["method"]):
            rtxt += f" (vs {basis})"
        err = r.get("max_err")
        if _ok(r):
            note = r.get("extrapolation", "")
            if r.get("timing_note"):
                note = (note + "; " if note else "") + r["timing_note"]
            if (r.get("others_cpu_busy") or 0) > 0.25:
                note = (note + "; " if note else "") + f"noisy ({100 * r['others_cpu_busy']:.0f}% CPU used by others)"
        else:
            note = (r.get("status", "") + ": " + (r.get("error") or r.get("notes", "")))[:80]
        out.append(f"| {r['method']} | {r.get('estimator', '')} | {fmt_time(r.get('time_s'))} | {rtxt} | "
                   f"{'-' if err is None else f'{err:.1e}'} | {fmt_bytes(r.get('peak_mem_bytes'))} | {note} |")
    return "\n".join(out)


def markdown_report(results: Dict[str, Dict], goals: List[Dict], machine: Dict) -> str:
    dev = machine.get("gpu") or f"{machine.get('cpu')}, {machine.get('torch_threads')} threads"
    out = [f"Measured on {dev}; torch {machine.get('torch')}, mpruner {machine.get('mpruner')} "
           f"(commit {(machine.get('git_commit') or '?')[:10]}), {machine.get('date')}.", ""]
    for name, res in results.items():
        out += [f"**{name}** ({res['workload']['description']}):", "", markdown_table(res), ""]
    if goals:
        out += ["| goal | against | verdict |", "|---|---|---|"]
        for g in goals:
            target = f"≥ {g['min_speedup']:g}× faster" if "min_speedup" in g else f"≤ {g['max_ratio']:g}× the time"
            out.append(f"| {g['workload']}: {target} | {g.get('other', g['against'])} | {g['verdict']} |")
        out.append("")
    return "\n".join(out)


def profile_text(p: Optional[Dict]) -> str:
    if not p or p.get("status") != "ok":
        return ""
    share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(p["groups_share"].items(), key=lambda kv: -kv[1]))
    top = ", ".join(f"{o['op']} {o['self_ms']:.1f} ms" for o in p["top_ops"][:5])
    return f"   where mpruner's time goes ({p['batches_profiled']} batches): {share}\n   top ops: {top}"


def clean(o):
    """JSON-safe: NaN/inf -> None."""
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items() if k != "log"}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    return o


def write_json(path: str, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(obj), f, indent=1, default=str)


# ---------------------------------------------------------------- plots
COLORS = {"mpruner": "#1f77b4", "baseline": "#7f7f7f", "floor": "#2ca02c", "peer": "#d62728"}
# one color per row in the line plots
METHOD_COLORS = {"mpruner": "#1f77b4", "mpruner full-batch": "#17becf", "torch baseline": "#7f7f7f",
                 "gram floor": "#2ca02c", "torch-cka": "#ff7f0e", "cka-pytorch": "#8c564b", "pytorch-cka": "#d62728",
                 "ckatorch": "#9467bd", "cka-analyzer": "#e377c2"}


GROUP_LABELS = {"mpruner": "mpruner", "baseline": "plain PyTorch", "floor": "Gram GEMM floor", "peer": "other libraries"}
FONT = 11  # points; the figures are saved at 100 dpi, 1200 px wide or more


def plot_headline(results: Dict[str, Dict], path: str, title: str):
    """One horizontal bar chart per workload, stacked; the legend lists the groups that ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = [k for k, v in results.items() if any(_ok(r) for r in v["rows"])]
    if not names:
        return
    counts = [sum(_ok(r) for r in results[n]["rows"]) for n in names]
    height = sum(1.2 + 0.42 * c for c in counts) + 1.0  # inches; the top 1.0 holds the title and legend
    fig, axes = plt.subplots(len(names), 1, figsize=(12.5, height), squeeze=False,
                             gridspec_kw={"height_ratios": [1.2 + 0.42 * c for c in counts]})
    groups_seen, any_extrapolated = [], False
    for ax, name in zip(axes[:, 0], names):
        rows = sorted((r for r in results[name]["rows"] if _ok(r)), key=lambda r: r["time_s"])
        y = list(range(len(rows)))
        for i, r in enumerate(rows):
            extrapolated = r.get("status") == "extrapolated"
            any_extrapolated |= extrapolated
            if r["group"] not in groups_seen:
                groups_seen.append(r["group"])
            ax.barh(i, r["time_s"], color=COLORS.get(r["group"], "k"), alpha=0.45 if extrapolated else 1.0)
            ratio, _, fallback = display_ratio(r)  # what the table shows for this row
            label = ("~" if extrapolated else "") + fmt_time(r["time_s"]) + (
                f"  ({fmt_ratio(ratio)}x{'*' if fallback else ''})" if ratio is not None else "")
            ax.text(r["time_s"] * 1.08, i, label, va="center", fontsize=FONT - 1)
        ax.set_yticks(y)
        ax.set_yticklabels([r["method"] for r in rows], fontsize=FONT)
        ax.set_xscale("log")
        lo, hi = min(r["time_s"] for r in rows), max(r["time_s"] for r in rows)
        ax.set_xlim(lo / 2, hi * 12)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=FONT - 1)
        ax.grid(True, axis="x", which="major", alpha=0.3)
        desc = results[name]["workload"]["description"].split(", 32 sequences")[0]
        ax.set_title(f"{name}: {desc}", fontsize=FONT + 1, loc="left")
    axes[-1][0].set_xlabel("time per run (s, log scale)", fontsize=FONT)
    handles = [Patch(color=COLORS.get(g, "k"), label=GROUP_LABELS.get(g, g)) for g in groups_seen]
    if any_extrapolated:
        handles.append(Patch(color="#7f7f7f", alpha=0.45, label="pale, ~: timed on a subset, extrapolated"))
    fig.suptitle(title + "   (x = time / mpruner's of the same estimator, as in the tables; *: vs mpruner's "
                 "default row)", fontsize=FONT + 2, x=0.01, ha="left",
                 y=1 - 0.12 / height, va="top")
    fig.legend(handles=handles, fontsize=FONT, loc="upper left", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.0, 1 - 0.42 / height), handlelength=1.5, columnspacing=1.2)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scaling(sweeps: Dict[str, List[Dict]], path: str, title: str):
    """Time (top) and peak memory (bottom) against N, L and d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = [a for a in ("N", "L", "d") if a in sweeps]
    if not axes_names:
        return
    fig, axes = plt.subplots(2, len(axes_names), figsize=(max(12.5, 5.4 * len(axes_names)), 9.5), squeeze=False)
    any_extrapolated = False
    for c, axis in enumerate(axes_names):
        points = sweeps[axis]
        methods = list(dict.fromkeys(r["method"] for p in points for r in p["rows"]))
        for m in methods:
            xs, ts, ms, ext = [], [], [], []
            group = "peer"
            for p in points:
                x = p["workload"]["d"] if axis == "d" else p["workload"][axis]
                r = next((r for r in p["rows"] if r["method"] == m), None)
                if r is None or not _ok(r):
                    continue
                group = r["group"]
                xs.append(x)
                ts.append(r["time_s"])
                ms.append((r.get("peak_mem_bytes") or 0) / 2**20)
                ext.append(r.get("status") == "extrapolated")
            if not xs:
                continue
            style = dict(color=METHOD_COLORS.get(m), marker="o", ms=4, lw=2 if group == "mpruner" else 1,
                         ls="--" if group == "peer" else "-")
            line = axes[0][c].plot(xs, ts, label=m, **style)[0]
            axes[1][c].plot(xs, ms, label=m, **{**style, "color": line.get_color()})
            for x, t, e in zip(xs, ts, ext):
                if e:
                    any_extrapolated = True
                    axes[0][c].plot([x], [t], marker="o", mfc="white", color=line.get_color(), ms=7)
        for rr, ylabel in ((0, "time (s)"), (1, "peak memory above baseline (MiB)")):
            ax = axes[rr][c]
            ax.set_xscale("log", base=2)
            if rr == 0:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)  # linear: flat means flat
            ax.set_xlabel(axis, fontsize=FONT)
            ax.set_ylabel(ylabel, fontsize=FONT)
            ax.tick_params(labelsize=FONT - 1)
            ax.grid(True, which="both", alpha=0.3)
        fixed = ", ".join(f"{k}={points[0]['workload'][k]}" for k in ("L", "N", "n", "d") if k != axis)
        axes[0][c].set_title(f"sweep over {axis} ({fixed})", fontsize=FONT)
    handles, labels = axes[0][0].get_legend_handles_labels()  # the methods that ran
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, fontsize=FONT, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.suptitle(title + ("  (open markers: extrapolated)" if any_extrapolated else ""), fontsize=FONT + 2)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(labels) - 1) // 5), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)

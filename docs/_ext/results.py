"""The measured pages, rendered from the committed results at build time.

``docs/benchmarks.md``, ``performance.md``, ``results.md`` and ``reliability.md`` are Jinja2
templates over the JSON files in ``benchmarks/results/``: on Sphinx's ``source-read`` event their
text is rendered with :func:`namespace`, so every number on them is read from a committed file,
together with the processor, torch version, commit and load average that file records
(:func:`source`). Nothing is copied by hand; rerunning a benchmark and committing its JSON
updates the page. ``render(page)`` gives the same text outside Sphinx (the tests use it).

Template vocabulary: ``j("engine_cpu.json")`` is a file's data; ``source(name)`` its provenance
line; the filters ``ms``, ``secs``, ``x`` (a ratio), ``pct``, ``spct`` (signed percent), ``mib``,
``num`` (thousands separators), ``c7`` (a short commit) and ``minsec`` format numbers; the
functions named ``*_table`` build whole Markdown tables.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
PAGES = ("benchmarks", "performance", "results", "reliability")
NOT_RECORDED = "not recorded"


@functools.lru_cache(maxsize=None)
def _load(name: str) -> str:
    return (RESULTS / name).read_text(encoding="utf-8")


def j(name: str):
    """The data of ``benchmarks/results/<name>``."""
    return json.loads(_load(name))


# ---------------------------------------------------------------- number formats
def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def x(ratio: float, digits: int = 2) -> str:
    return f"{ratio:.{digits}f}×"


def pct(share: float, digits: int = 0) -> str:
    return f"{100 * share:.{digits}f}%"


def spct(share: float, digits: int = 1) -> str:
    return f"{100 * share:+.{digits}f} %"


def mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:.1f} MiB"


def num(n) -> str:
    return f"{n:,}"


def c7(commit: Optional[str]) -> str:
    return (commit or "?")[:7]


def md(text: str) -> str:
    """Free text from a results file, its Markdown punctuation escaped (``<one test>`` is not HTML)."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", str(text))


def minsec(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


# ---------------------------------------------------------------- provenance
def _triple(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values) + " (1, 5, 15 min)"


def _load_average(d: Dict) -> Optional[str]:
    m = d.get("machine") or {}
    for before, after in ((d.get("load_average_before"), d.get("load_average_after")),
                          (m.get("load_average"), m.get("load_average_after"))):
        if before is not None and after is not None:
            return f"load average {_triple(before)} at the start, {_triple(after)} at the end"
    written = m.get("load_average") or d.get("load_average")
    if written is not None:  # taken as the results were written, after the measurement
        return f"load average {_triple(written)} when the file was written"
    rows = list(d.get("rows", []))  # the benchmark suite records one per row: workloads, sweeps, summaries
    rows += [r for p in d.get("points", []) for r in p.get("rows", [])]
    rows += [r for h in (d.get("headline") or {}).values() for r in h.get("rows", [])]
    rows = [r for r in rows if r.get("load_avg")]
    if rows:
        ones = [la[0] for r in rows for la in r["load_avg"]]
        return f"load average (1 min) {min(ones):.2f}–{max(ones):.2f} over its rows"
    return None


def provenance(d: Dict) -> Dict[str, str]:
    """Processor, cores, torch, commit and load average as a results file records them."""
    m = d.get("machine") or {}
    processor = m.get("cpu") or m.get("device_name") or m.get("gpu")
    cores = m.get("cpu_count") or m.get("cores")
    torch = m.get("torch") or d.get("torch_version")
    commit = m.get("git_commit") or m.get("commit") or d.get("commit")
    return {"processor": (processor or f"processor {NOT_RECORDED}") + (f", {cores} cores" if cores else ""),
            "torch": f"torch {torch}" if torch else f"torch version {NOT_RECORDED}",
            "commit": f"commit {c7(commit)}" if commit else f"commit {NOT_RECORDED}",
            "load": _load_average(d) or f"load average {NOT_RECORDED}"}


def source(name: str) -> str:
    """One line naming a results file and the machine, torch, commit and load it records."""
    p = provenance(j(name))
    return (f"*Source: `benchmarks/results/{name}` — "
            + "; ".join([p["processor"], p["torch"], p["commit"], p["load"]]) + ".*")


# ---------------------------------------------------------------- tables
def _md(head: List[str], rows: List[List], align: Optional[str] = None) -> str:
    out = ["| " + " | ".join(head) + " |", align or "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def bench_table(name: str) -> str:
    """A benchmark-suite workload (``cpu_dense.json``, ...) as ``mpruner bench`` prints it."""
    from mpruner.bench.tables import markdown_table

    return markdown_table(j(name))


def goals_table() -> str:
    from mpruner.bench.tables import fmt_time

    rows = []
    for g in j("cpu_summary.json")["goals"]:
        other = g["other"] + (" (extrapolated)" if g.get("other_extrapolated") else "")
        rows.append([f"{g['workload']}: ≥ {g['min_speedup']:g}× faster than the {g['against']}",
                     f"mpruner {fmt_time(g['mpruner_s'])}, {other} {fmt_time(g['other_s'])}: **{x(g['speedup'])}**",
                     g["verdict"]])
    return _md(["goal (CPU)", "measured", "verdict"], rows)


def sweep_points(axis: str, method: str = "mpruner") -> List[Dict]:
    """(value of the axis, time, peak memory) of one method along a scaling sweep."""
    sweep = j(f"cpu_sweep_{axis}.json")
    out = []
    for p in sweep["points"]:
        row = next((r for r in p["rows"] if r["method"] == method and r.get("time_s") is not None), None)
        if row:
            out.append({"value": p["workload"][axis], "time_s": row["time_s"], "mem": row["peak_mem_bytes"]})
    return out


def floor_ratio_range() -> str:
    """mpruner's time against the Gram floor's, over every sweep point."""
    ratios = []
    for axis in ("N", "L", "d"):
        for p in j(f"cpu_sweep_{axis}.json")["points"]:
            rows = {r["method"]: r for r in p["rows"] if r.get("time_s")}
            if "mpruner" in rows and "gram floor" in rows:
                ratios.append(rows["mpruner"]["time_s"] / rows["gram floor"]["time_s"])
    return f"{min(ratios):.1f}–{max(ratios):.1f}×"


def peer_ratio_range(peer: str = "pytorch-cka") -> str:
    ratios = []
    for axis in ("N", "L", "d"):
        for p in j(f"cpu_sweep_{axis}.json")["points"]:
            rows = {r["method"]: r for r in p["rows"] if r.get("time_s")}
            if "mpruner" in rows and peer in rows:
                ratios.append(rows[peer]["time_s"] / rows["mpruner"]["time_s"])
    return f"{min(ratios):.1f}–{max(ratios):.1f}×"


def roofline(workload: str) -> Dict[str, float]:
    """What the float32 GEMM rate this run measured allows for a workload's Grams."""
    d = j(f"cpu_{workload}.json")
    shape = f"{d['workload']['n']}x{d['workload']['d']}"
    rate = d["roofline"]["gemm"][shape]
    gram = d["work"]["gram_flops"]
    rows = {r["method"]: r for r in d["rows"]}
    goal = next(g for g in j("cpu_summary.json")["goals"] if g["workload"] == workload)
    floor = rows["gram floor"]["time_s"]
    return {"rate_gflops": rate / 1e9, "gram_gflop": gram / 1e9, "half_at_peak_ms": 1e3 * gram / 2 / rate,
            "target_ms": 1e3 * goal["other_s"] / goal["min_speedup"], "peer": goal["other"],
            "peer_vs_floor": rows[goal["other"]]["time_s"] / floor, "mpruner_vs_floor": rows["mpruner"]["time_s"] / floor,
            "speedup_goal": goal["min_speedup"]}


def profile_shares(workload: str) -> str:
    p = j("cpu_summary.json")["headline"][workload]["profile"]
    return ", ".join(f"{k} {pct(v)}" for k, v in sorted(p["groups_share"].items(), key=lambda kv: -kv[1]))


def engine_table(name: str = "engine_cpu.json") -> str:
    rows = [[r["workload"], ms(r["engine_s"]), ms(r["bare_gemm_s"]), x(r["ratio"]), f"≤ {r['goal']}×",
             pct(r.get("others_cpu_share", 0), 1)] for r in j(name)["results"]]
    return _md(["workload", "engine", "bare GEMM (torch.bmm)", "ratio", "goal", "CPU used by other processes"],
               rows, "|---|---:|---:|---:|---|---:|")


def hook_table(name: str = "engine_cpu.json") -> str:
    rows = []
    for r in j(name)["hook_path"]:
        shape = "×".join(map(str, r["shape"])) if r.get("shape") else ""
        rows.append([r["workload"], shape, r["view"], ms(r["analyze_s"]), ms(r["forward_update_s"]), x(r["ratio"]),
                     f"≤ {r['goal']}×", pct(r.get("others_cpu_share", 0), 1)])
    return _md(["workload", "output shape", "view", "`analyze`", "forward + `update`", "ratio", "goal",
                "CPU used by other processes"], rows, "|---|---|---|---:|---:|---:|---|---:|")


def precision_table(name: str = "engine_precision_cpu.json") -> str:
    """Each precision mode per workload: how it ran, its CKA error against float64, its time
    against the bare float32 bmm (where the file records one), and the goals."""
    rows = []
    for r in j(name)["results"]:
        speed = ([ms(r["engine_s"]), ms(r["bare_gemm_s"]), x(r["ratio"])] if "ratio" in r
                 else [r.get("speed_note", "not recorded"), "", ""])
        rows.append([r["workload"], f"`{r['precision']}`", r["ran"], f"{r['cka_err']:.1e}", f"≤ {r['goal_err']:g}"]
                    + speed + [f"≤ {r['goal_ratio']}×"])
    return _md(["workload", "precision", "ran", "CKA error vs float64", "goal", "engine", "bare bmm", "ratio",
                "goal"], rows, "|---|---|---|---:|---|---:|---:|---:|---|")


def peer_hook_table(name: str = "engine_precision_cpu.json") -> str:
    """``analyze`` against pytorch-cka's hook path on the same replay model."""
    rows = []
    for r in j(name)["analyze_vs_peer"]:
        if r.get("status") != "ok":
            rows.append([r["workload"], "", "", r.get("status", ""), "", ""])
            continue
        shape = "×".join(map(str, r["shape"]))
        if "speedup" in r:
            rows.append([r["workload"], shape, ms(r["analyze_s"]), ms(r["peer_s"]), x(r["speedup"]),
                         f"≥ {r['goal_speedup']}×"])
        else:
            rows.append([r["workload"], shape, r.get("speed_note", ""), "", "", f"≥ {r['goal_speedup']}×"])
    return _md(["workload", "output shape", "`analyze`", "pytorch-cka `compute_cka`", "speed-up", "goal"], rows,
               "|---|---|---:|---:|---:|---|")


def versions_table() -> str:
    d = j("engine_versions_cpu.json")
    rows = []
    for r in d["results"]:
        spread = [p["bare_gemm_s"] for p in r["current"]["processes"] + r["baseline"]["processes"]]
        rows.append([r["workload"], x(r["current"]["ratio"]), x(r["baseline"]["ratio"]),
                     x(r["ratio_current_vs_baseline"]), r["rounds"], x(max(spread) / min(spread))])
    return _md(["workload", "this engine / bare GEMM", f"commit {c7(d['baseline']['commit'])} / bare GEMM",
                "now / before", "processes each", "bare GEMM, slowest / fastest process"], rows,
               "|---|---:|---:|---:|---:|---:|")


def profile_table() -> str:
    rows = []
    for r in j("engine_profile_cpu.json")["results"]:
        s, g = r["profile"]["shares"], r["one_thread_gram"]
        rows.append([r["workload"], pct(s["gram_gemms"]), pct(s["centering"]), pct(s["hsic_pass"]), pct(s["other"]),
                     x(g["time_ratio"]), x(g["flop_ratio"])])
    return _md(["workload", "Gram GEMMs", "feature centering", "HSIC pass", "other",
                "one thread: triangle / full `torch.mm` time", "… flops"], rows, "|---|---:|---:|---:|---:|---:|---:|")


def analysis_table() -> str:
    rows = [[r["view"], secs(r["forward_s"]), secs(r["analyze_s"]), spct(r["overhead"]), spct(r["overhead_cpu"]),
             "—" if r.get("goal") is None else f"≤ {pct(r['goal'])}", r["repeats"]]
            for r in j("analysis_cpu.json")["results"]]
    return _md(["view", "forward passes", "with `analyze`", "wall overhead", "CPU-time overhead", "goal",
                "repeats"], rows, "|---|---:|---:|---:|---:|---|---:|")


def lm_overhead_table(name: str = "lm_cpu.json") -> str:
    rows = []
    for r in j(name)["results"]:
        if r["what"] == "kernel":
            continue
        goal = "—" if r.get("goal") is None else (
            f"≤ {pct(r['goal'])}: {'met' if r['overhead'] <= r['goal'] else 'missed'}")
        rows.append([r["what"], r["baseline"], secs(r["baseline_seconds"]), secs(r["seconds"]), spct(r["overhead"]),
                     spct(r["overhead_cpu"]), goal])
    return _md(["what", "against", "baseline", "time", "wall overhead", "CPU-time overhead", "goal"], rows,
               "|---|---|---:|---:|---:|---:|---|")


def lm_result(name: str, what: str) -> Dict:
    return next(r for r in j(name)["results"] if r["what"] == what)


def distributed_table() -> str:
    d = j("distributed_cpu.json")
    return _md(["", "1 process", "2 processes", "ratio", "goal"], [
        ["wall time", secs(d["single_s"]), secs(d["sharded_s"]), x(d["ratio"]),
         f"≤ {d['goal']}×: {'met' if d['goal_met'] else 'missed'}"],
        ["CPU seconds of rank 0 (its share of the work)", "", "", x(d["cpu_per_rank_ratio"]), ""],
        ["CPU seconds of all ranks", "", "", x(d["cpu_ratio"]), ""],
        ["final all-reduce", "", f"{ms(d['all_reduce_s'])} ({pct(d['all_reduce_share'], 1)} of the run); "
                                 f"{ms(d['all_reduce_alone_s'])} alone", "", ""],
    ], "|---|---:|---:|---:|---|")


def token_ratio(name: str) -> float:
    rows = {r["method"]: r for r in j(name)["rows"]}
    return rows["mpruner token_cka"]["time_s"] / rows["gram floor"]["time_s"]


def _demo_row(name: str, label: str) -> List:
    d = j(name)
    params = f"{d['params_before'] / 1e6:.2f}M → {d['params_after'] / 1e6:.2f}M " \
             f"({pct(d['params_after'] / d['params_before'] - 1, 1)})"
    acc = f"{pct(d['metric_before'], 2)} → {pct(d['metric_after'], 2)}"
    time = minsec(d["seconds_total"])
    time += (f", of which {minsec(d['seconds_start_model'])} the start model" if d["seconds_start_model"]
             else " pruning (start model from the cache)")
    return [label, f"{d['layers_before']} → {d['layers_after']}", params, acc,
            f"{d['attempts']} ({d['accepted']} accepted)", time]


def demo_table() -> str:
    return _md(["scenario", "layers", "parameters", "accuracy before → after", "attempts", "wall time"], [
        _demo_row("demo/text_summary.json", "text: all-MiniLM-L6-v2, Rotten Tomatoes"),
        _demo_row("demo/vision_summary.json", "vision: EfficientNet-Lite0, Fashion-MNIST")])


def lm_heal_table() -> str:
    """Every recipe of the LM demo at every n (lm_heal.json): blocks, healing, tokens, ratios, minutes."""
    d = j("lm_heal.json")
    rows = []
    for r in d["rows"]:
        b = (lambda s: f"**{s}**") if r["recipe"] == "mpruner" else (lambda s: s)
        unhealed = r.get("ratio_unhealed", r["ratio"] if not r["curve"] else None)
        rows.append([r["n"], b(r["recipe"]), _runs(r["removed"]), md(r["healing"]), num(r["heal_tokens"]),
                     "–" if unhealed is None else x(unhealed, 3), b(x(r["ratio"], 3)),
                     f"{r['seconds'] / 60:.1f}"])
    return _md(["n", "recipe", "removed blocks", "healing", "healing tokens", "before healing / original",
                "after / original", "minutes"], rows, "|---:|---|---|---|---:|---:|---:|---:|")


def lm_heal_goals() -> str:
    """Each goal of lm_heal.json: met, or missed by how much, with the tokens and minutes used."""
    lines = []
    for g in j("lm_heal.json")["goals"]:
        limit = f" within {g['max_minutes']:.0f} minutes" if g.get("max_minutes") else ""
        verdict = "**met**" if g["met"] else f"**missed** by {g['by']:+.3f}×"
        lines.append(f"- {g['n']} blocks removed: at most {x(g['max_ratio'])}{limit}: {verdict} "
                     f"({x(g['ratio'], 3)} after {num(g['heal_tokens'])} healing tokens, "
                     f"{g['minutes']:.1f} minutes in all)")
    return "\n".join(lines)


def lm_select_table(n: int) -> str:
    """Every block-choice method at one n (lm_select.json): blocks, perplexity ratios, seconds."""
    d = j("lm_select.json")
    rows = []
    for r in d["choices"]:
        if r["n"] != n:
            continue
        b = (lambda s: f"**{s}**") if r["method"] == d["auto"] else (lambda s: s)
        rows.append([b(r["method"]), _runs(r["blocks"]), b(x(r["ratio_unhealed"])),
                     "–" if r["ratio_linear"] is None else x(r["ratio_linear"]), f"{r['seconds']:.0f} s"])
    return _md(["method", "removed blocks", "unhealed / original", "linear replacement", "choice took"], rows,
               "|---|---|---:|---:|---:|")


def lm_eval_table() -> str:
    """lm-eval's perplexity and mpruner.perplexity on the same documents (lm_eval_crosscheck.json)."""
    d = j("lm_eval_crosscheck.json")
    h, per, joined = d["lm_eval"], d["mpruner_per_document"], d["mpruner_joined"]
    rows = [[f"lm-eval `mpruner_wiki_perplexity`: each document after the prefix token `{md(d['prefix_token'])}`",
             num(h["tokens"]), f"{h['token_perplexity']:.3f}"],
            ["`mpruner.perplexity` on [prefix] + each document, one window each (lm-eval's convention)",
             num(per["tokens"]), f"{per['token_perplexity']:.3f}"]]
    for key, label in (("default", "the default window"), ("demo", "the LM demo's window")):
        r = joined[key]
        rows.append([f"`mpruner.perplexity` on the documents joined by EOS, windows of {r['seq_len']} ({label}), "
                     f"BOS {'per window' if r['add_bos'] else 'never'}", num(r["tokens"]), f"{r['perplexity']:.3f}"])
    return _md(["convention", "predicted tokens", "token perplexity"], rows, "|---|---:|---:|")


SIGNAL_LABELS = {"cka": "1 − normalized CKA(input, output)", "influence": "Block Influence",
                 "angular": "angular distance", "update": "relative update norm", "loo": "leave-one-out loss"}


def lm_signal_table() -> str:
    """Each per-block signal's Spearman correlation with the single-block damage (lm_select.json)."""
    d = j("lm_select.json")
    rows = []
    for name, rho in sorted(d["spearman"].items(), key=lambda kv: -kv[1]):
        base, _, variant = name.partition("-skip-first")
        label = SIGNAL_LABELS.get(base.rstrip("-"), name) + (", first token left out" if "-skip-first" in name else "")
        rows.append([label, f"{rho:.3f}"])
    return _md(["signal (blocks 1–28)", "Spearman ρ with the single-block damage"], rows, "|---|---:|")


def _runs(indices: List[int]) -> str:
    """[3, 4, 5, 8] -> '3–5, 8'."""
    out, start = [], None
    s = sorted(indices)
    for i, v in enumerate(s):
        if start is None:
            start = v
        if i + 1 == len(s) or s[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out)


PIPELINE_ROWS = {"dense": "dense", "dense+recovery": "dense + the same recovery training (control)",
                 "2:4": "2:4", "depth": "depth"}


def pipeline_label(r: Dict) -> str:
    """'depth+width-25%+2:4' -> 'depth, then width 25%, then 2:4'."""
    key = r["row"]
    if key in PIPELINE_ROWS and key != "depth":
        return PIPELINE_ROWS[key]
    if key.endswith("(matched)"):
        return f"Wanda {key.split('-')[1].split()[0]} alone (as many non-zeros as depth + Wanda 50%)"
    parts = []
    for p in key.split("+"):
        p = p.replace("wanda-", "Wanda ").replace("width-", "width ")
        if p == "depth" and r.get("layers"):
            p = f"depth ({r['layers'].replace('->', ' → ')} blocks)" if key == "depth" else "depth"
        parts.append(p)
    return ", then ".join(parts)


def pipeline_table(scenario: str, name: Optional[str] = None) -> str:
    d = j(name or f"pipeline_{scenario}.json")
    rows = [[pipeline_label(r), num(r["params"]), num(r["nonzero"]), f"{r['macs'] / 1e6:.1f} M", f"{r['latency_ms']:.1f}",
             f"{r['metric']:.4f}", f"{r['drop_points']:+.1f}",
             f"{r['drop_points_vs_control']:+.1f}" if "drop_points_vs_control" in r else "—"] for r in d["rows"]]
    return _md(["row", "params", "non-zero", "MACs", "CPU latency (ms)", "accuracy", "drop (points)",
                "drop vs control"], rows, "|---|---:|---:|---:|---:|---:|---:|---:|")


def pipeline_row(name: str, row: str) -> Dict:
    return next(r for r in j(name)["rows"] if r["row"] == row)


def fuzz_total() -> int:
    return sum(r["executions"] or 0 for r in j("reliability/fuzz_long.json")["rows"])


def fuzz_table() -> str:
    rows = [[r["target"], num(r["executions"] or 0), f"{r['seconds']:.0f} s", len(r["findings"])]
            for r in j("reliability/fuzz_long.json")["rows"]]
    return _md(["target", "executions", "seconds", "findings"], rows, "|---|---:|---:|---:|")


def property_total() -> int:
    return sum(p["cases"] for p in j("reliability/properties_long.json")["properties"].values())


def properties_table() -> str:
    rows = []
    for name, p in j("reliability/properties_long.json")["properties"].items():
        state = "all examples" if p["finished"] else "stopped at the time limit"
        rows.append([name, num(p["cases"]), f"{p['max_error']:.1e}", f"{p['seconds']} s", state])
    return _md(["property", "checked results", "max CKA error", "time", "ran"], rows, "|---|---:|---:|---:|---|")


def _counts(r: Dict) -> str:
    text = f"{r['mutants']} mutants, {r['checked']} checked: {r['killed']} killed, {r['survived']} survived"
    extra = [f"{r[k]} {label}" for k, label in (("no_tests", "without a test"), ("timeout", "timed out"),
                                                ("not_checked", "not reached")) if r.get(k)]
    return text + (f", {', '.join(extra)}" if extra else "")


def mutation_table() -> str:
    """Per core module: mutmut's counts before the new tests and in its last run, from mutmut_summary.json."""
    summary = j("reliability/mutmut_summary.json")
    rows = []
    for module, m in sorted(summary["modules"].items(), key=lambda kv: kv[0].rsplit("/", 1)[1]):
        before = m.get("before_new_tests")
        before_text = f"{_counts(before)} (at {before['commit']})" if before else "—"
        run = m.get("run")
        after = "—"
        if run:
            after = (f"{_counts(run)}; of the survivors {len(m['equivalent'])} equivalent, "
                     f"{len(m['unexplained'])} unexplained" + (f" ({m['note']})" if m.get("note") else ""))
        rows.append([f"`{module}`", before_text, after])
    return _md(["module", "before the new tests", "after the new tests (last run)"], rows)


def lm_select_goal(key: str) -> str:
    g = j("lm_select.json").get("goals", {}).get(key)
    if g is None:
        return "not measured"
    return f"{g['value']:.3f} against {g['goal']}: {'met' if g['met'] else 'not met'}"


def namespace() -> Dict:
    """Everything a results template may use."""
    names = ("j", "source", "provenance", "ms", "secs", "x", "pct", "spct", "mib", "num", "c7", "minsec", "md",
             "bench_table", "goals_table", "sweep_points", "floor_ratio_range", "peer_ratio_range", "roofline",
             "profile_shares", "engine_table", "hook_table", "precision_table", "peer_hook_table", "versions_table", "profile_table", "analysis_table",
             "lm_overhead_table", "lm_result", "distributed_table", "token_ratio", "demo_table", "lm_heal_table", "lm_heal_goals",
             "pipeline_table", "pipeline_row", "pipeline_label", "fuzz_total", "fuzz_table", "property_total", "properties_table",
             "mutation_table", "lm_select_table", "lm_signal_table", "lm_select_goal", "lm_eval_table")
    g = globals()
    return {n: g[n] for n in names}


def _environment():
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update({n: f for n, f in namespace().items() if n in (
        "ms", "secs", "x", "pct", "spct", "mib", "num", "c7", "minsec", "md")})
    env.globals.update(namespace())
    return env


def render_text(text: str) -> str:
    return _environment().from_string(text).render()


def render(page: str) -> str:
    """The Markdown of ``docs/<page>.md`` with every number filled in from the results."""
    return render_text((DOCS / f"{page}.md").read_text(encoding="utf-8"))


def _source_read(app, docname: str, source: List[str]) -> None:
    if docname not in PAGES:
        return
    for path in sorted(RESULTS.rglob("*.json")):
        app.env.note_dependency(os.fspath(path))  # a changed results file rebuilds the page
    try:
        source[0] = render_text(source[0])
    except Exception as e:  # name the page: Jinja's own message names only the template line
        raise RuntimeError(f"docs/{docname}.md: rendering it from benchmarks/results failed: "
                           f"{type(e).__name__}: {e}") from e


def setup(app):
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

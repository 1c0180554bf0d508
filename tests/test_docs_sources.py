"""What the docs state comes from its source: every measured number from a committed results file.

The measured pages (``docs/benchmarks.md``, ``performance.md``, ``results.md``,
``reliability.md``) are templates that ``docs/_ext/results.py`` renders from
``benchmarks/results/**/*.json`` when the site is built. These tests render them the same way and
check that the numbers of each committed file appear on them, recomputed here independently of the
renderer; that changing a results file changes the page (nothing on it is copied by hand); that
every results file is shown somewhere; and that the README and the other pages quote no measured
time or speed-up of their own (those belong on the rendered pages). The layout table of
``docs/design.md`` must match ``tests/test_layout.py``'s ``ALLOWED``.
"""
import importlib.util
import json
import pathlib
import re
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def _renderer():
    spec = importlib.util.spec_from_file_location("docs_results", DOCS / "_ext" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results = _renderer()
RAW = {page: results.render(page) for page in results.PAGES}
PAGES = {page: " ".join(text.split()) for page, text in RAW.items()}  # prose wraps anywhere


def _json(name):
    return json.loads((RESULTS / name).read_text())


def _min_s(seconds):
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


def _section(page, title):
    text = RAW[page]
    assert title in text, f"docs/{page}.md has no section {title!r}"
    return " ".join(text.split(title, 1)[1].split("\n## ", 1)[0].split())


def test_pages_render_completely():
    for page, text in PAGES.items():
        assert "{{" not in text and "{%" not in text, page
        assert "*Source: `benchmarks/results/" in text, page


def test_demo_times():
    text, vision = _json("demo/text_summary.json"), _json("demo/vision_summary.json")
    page = PAGES["results"]
    assert f"{_min_s(text['seconds_total'])} pruning (start model from the cache)" in page
    assert text["seconds_start_model"] == 0.0
    assert f"{_min_s(vision['seconds_total'])}, of which {_min_s(vision['seconds_start_model'])} the start model" \
        in page
    for d in (text, vision):
        assert f"{d['layers_before']} → {d['layers_after']}" in page
        assert f"{100 * d['metric_before']:.2f}% → {100 * d['metric_after']:.2f}%" in page


def test_lm_heal_rows_and_goals():
    d = _json("lm_heal.json")
    text = _section("results", "## `mpruner demo --scenario lm`")
    assert f"**{d['ppl_original']:.2f}**" in text
    for r in d["rows"]:
        ratio = f"{r['ratio']:.3f}×"
        assert (f"**{ratio}**" if r["recipe"] == "mpruner" else ratio) in text
        assert f"{r['seconds'] / 60:.1f}" in text
    for g in d["goals"]:
        verdict = "**met**" if g["met"] else f"**missed** by {g['by']:+.3f}×"
        assert f"- {g['n']} blocks removed: at most {g['max_ratio']:.2f}×" in text and verdict in text
    assert "lm_heal.png" in text and "demo/lm_summary.json" not in text


def test_memory_range_of_the_n_sweep():
    sweep = _json("cpu_sweep_N.json")
    mib = [next(r for r in p["rows"] if r["method"] == "mpruner")["peak_mem_bytes"] / 2**20 for p in sweep["points"]]
    assert f"{min(mib):.1f} to {max(mib):.1f} MiB" in PAGES["benchmarks"]


@pytest.mark.parametrize("name", ["cpu_tokens.json", "cpu-lm-metrics_tokens.json"])
def test_token_cka_ratio_to_the_gram_floor(name):
    rows = {r["method"]: r for r in _json(name)["rows"]}
    ratio = rows["mpruner token_cka"]["time_s"] / rows["gram floor"]["time_s"]
    assert f"{ratio:.2f}× the time of the bare per-sequence Gram GEMMs" in PAGES["benchmarks"]


@pytest.mark.parametrize("workload", ["dense", "conv", "tokens"])
def test_benchmark_tables_come_from_the_results(workload):
    d = _json(f"cpu_{workload}.json")
    text = PAGES["benchmarks"]
    for r in d["rows"]:
        if r.get("time_s") is not None:
            assert f"| {r['method']} | {r.get('estimator', '')} |" in text, r["method"]
            if r.get("max_err") is not None:
                assert f"{r['max_err']:.1e}" in text, r["method"]
    assert f"commit {d['machine']['git_commit'][:7]}" in text


def test_speed_goals_come_from_the_summary():
    text = _section("benchmarks", "## Speed goals")
    for g in _json("cpu_summary.json")["goals"]:
        assert g["verdict"] in text and f"{g['speedup']:.2f}×" in text


def test_lm_metric_rows_come_from_the_results():
    d = _json("cpu-lm-metrics_tokens.json")
    text = _section("benchmarks", "## Token cosine and angular distance")
    assert d["machine"]["git_commit"][:7] in text
    for r in d["rows"]:
        assert f"| {r['method']} | {r['estimator']} |" in text


def test_reliability_counts_come_from_the_results():
    text = PAGES["reliability"]
    fuzz = _json("reliability/fuzz_long.json")
    assert f"{sum(r['executions'] or 0 for r in fuzz['rows']):,}" in text
    for r in fuzz["rows"]:
        assert f"| {r['target']} | {r['executions'] or 0:,} |" in text
    props = _json("reliability/properties_long.json")["properties"]
    assert f"{sum(p['cases'] for p in props.values()):,}" in text
    for name, p in props.items():
        assert f"| {name} | {p['cases']:,} | {p['max_error']:.1e} |" in text


def test_mutation_counts_come_from_the_summary():
    # Each module's mutmut counts on the Reliability page are mutmut_summary.json's (written by
    # tools/mutation_summary.py from the verdict files): the run before the new tests, and the
    # last run, with its survivors explained as equivalent or left unexplained.
    text = RAW["reliability"].split("## Mutation testing", 1)[1].split("\n## ", 1)[0]
    for module, m in _json("reliability/mutmut_summary.json")["modules"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{module}` |"))
        before = m.get("before_new_tests")
        if before:
            assert (f"{before['mutants']} mutants, {before['checked']} checked: {before['killed']} killed, "
                    f"{before['survived']} survived") in row and f"(at {before['commit']})" in row, module
        run = m["run"]
        assert f"{run['mutants']} mutants, {run['checked']} checked: {run['killed']} killed, " \
               f"{run['survived']} survived" in row, module
        assert f"{len(m['equivalent'])} equivalent, {len(m['unexplained'])} unexplained" in row, module
        for key, label in (("no_tests", "without a test"), ("timeout", "timed out"), ("not_checked", "not reached")):
            if run[key]:
                assert f"{run[key]} {label}" in row, (module, key)


def test_engine_tables_come_from_the_results():
    eng = _json("engine_cpu.json")
    text = _section("performance", "## The engine against the bare Gram GEMMs")
    for r in eng["results"]:
        assert f"| {r['workload']} | {1e3 * r['engine_s']:.1f} ms | {1e3 * r['bare_gemm_s']:.1f} ms | " \
               f"{r['ratio']:.2f}× |" in text, r["workload"]
    assert f"commit {eng['machine']['commit'][:7]}" in text
    hooks = _section("performance", "## `analyze` against plain forward passes")
    for r in eng["hook_path"]:
        assert f"| {1e3 * r['analyze_s']:.1f} ms | {1e3 * r['forward_update_s']:.1f} ms | {r['ratio']:.2f}× |" in hooks
    for r in _json("engine_versions_cpu.json")["results"]:
        assert f"{r['current']['ratio']:.2f}×" in text and f"{r['baseline']['ratio']:.2f}×" in text
    for r in _json("engine_profile_cpu.json")["results"]:
        assert f"{r['one_thread_gram']['time_ratio']:.2f}×" in text
        assert f"{r['profile']['shares']['gram_gemms']:.0%}" in text


def test_analysis_cost_comes_from_the_results():
    text = _section("performance", "## `analyze` against plain forward passes")
    for r in _json("analysis_cpu.json")["results"]:
        assert f"| {r['view']} | {r['forward_s']:.2f} s | {r['analyze_s']:.2f} s | {100 * r['overhead']:+.1f} % |" \
            in text


def test_distributed_scaling_comes_from_the_results():
    d = _json("distributed_cpu.json")
    text = _section("performance", "## Two processes against one")
    assert f"| {d['single_s']:.2f} s | {d['sharded_s']:.2f} s | {d['ratio']:.2f}× |" in text


def test_lm_overhead_table_comes_from_the_results():
    d = _json("lm_cpu.json")
    text = _section("performance", "## Language-model metrics and perplexity")
    for r in d["results"]:
        if r["what"] == "kernel":
            continue
        assert f"| {r['baseline_seconds']:.2f} s | {r['seconds']:.2f} s | {100 * r['overhead']:+.1f} % | " \
               f"{100 * r['overhead_cpu']:+.1f} % |" in text, r["what"]


@pytest.mark.parametrize("scenario", ["vision", "text"])
def test_pipeline_tables_come_from_the_results(scenario):
    d = _json(f"pipeline_{scenario}.json")
    text = _section("results", "## Depth, then width, then sparsity")
    assert f"commit {d['commit']}" in text
    for r in d["rows"]:
        assert f"| {r['params']:,} | {r['nonzero']:,} | {r['macs'] / 1e6:.1f} M | {r['latency_ms']:.1f} | " \
               f"{r['metric']:.4f} | {r['drop_points']:+.1f} | {r['drop_points_vs_control']:+.1f} |" in text, r["row"]


def test_lm_eval_crosscheck_comes_from_the_results():
    d = _json("lm_eval_crosscheck.json")
    text = PAGES["results"]
    assert f"| {d['lm_eval']['tokens']:,} | {d['lm_eval']['token_perplexity']:.3f} |" in text
    assert f"| {d['mpruner_per_document']['tokens']:,} | {d['mpruner_per_document']['token_perplexity']:.3f} |" in text
    for r in d["mpruner_joined"].values():
        assert f"| {r['tokens']:,} | {r['perplexity']:.3f} |" in text
    assert f"**{d['lm_eval']['word_perplexity']:.3f}**" in text and f"**{d['cloze']['acc']:.3f}**" in text


def test_every_results_file_is_shown():
    # Each committed results file is named on a rendered page (its tables or its provenance line).
    shown = "\n".join(PAGES.values())
    missing = [p.relative_to(RESULTS).as_posix() for p in sorted(RESULTS.rglob("*.json"))
               if p.relative_to(RESULTS).as_posix() not in shown and p.name not in shown]
    assert not missing, f"results files no page shows: {missing}"


def test_a_changed_results_file_changes_the_page(tmp_path, monkeypatch):
    # Nothing on the measured pages is copied by hand: a new measurement is a new page.
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy)
    data = json.loads((copy / "engine_cpu.json").read_text())
    data["results"][0]["engine_s"], data["results"][0]["ratio"] = 0.0123456, 0.4321
    data["machine"]["commit"] = "abcdef0123456789"
    (copy / "engine_cpu.json").write_text(json.dumps(data))
    module = _renderer()
    monkeypatch.setattr(module, "RESULTS", copy)
    module._load.cache_clear()
    page = module.render("performance")
    assert "| 12.3 ms |" in page and "0.43×" in page and "commit abcdef0" in page
    assert page != RAW["performance"]


MEASURED = re.compile(r"\d+(?:\.\d+)?\s?(?:ms|µs)\b|\d+\.\d+\s?×|\b\d+ min \d+ s\b|\d+(?:\.\d+)? GFLOP/s")


def test_other_pages_quote_no_measurements():
    # Times, speed-ups and rates are measurements; only the rendered pages (from the JSON) carry them.
    pages = [ROOT / "README.md"] + [p for p in DOCS.rglob("*.md") if "_build" not in p.parts
                                    and p.stem not in results.PAGES]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in pages
             for m in MEASURED.finditer(p.read_text(encoding="utf-8"))]
    assert not found, "measured numbers outside the rendered pages:\n" + "\n".join(found)


def test_design_layout_table_matches_test_layout():
    spec = importlib.util.spec_from_file_location("layout", ROOT / "tests" / "test_layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    text = (DOCS / "design.md").read_text(encoding="utf-8").split("## The layout", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in text.splitlines():
        m = re.match(r"\| `mpruner/(\w+)(?:/|\.py)` \| .* \| (.*) \|$", line)
        if m:
            table[m.group(1)] = set() if m.group(2) == "nothing" else set(re.findall(r"`(\w+)`", m.group(2)))
    assert table == layout.ALLOWED

"""Numbers quoted in README.md come from the committed results files."""
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RESULTS = ROOT / "benchmarks" / "results"


def _json(name):
    return json.loads((RESULTS / name).read_text())


def _min_s(seconds):
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s"


def test_demo_times():
    text, vision = _json("demo/text_summary.json"), _json("demo/vision_summary.json")
    assert f"{_min_s(text['seconds_total'])} pruning (start model from the cache)" in README
    assert text["seconds_start_model"] == 0.0
    assert f"{_min_s(vision['seconds_total'])}, of which {_min_s(vision['seconds_start_model'])} the start model" \
        in README


def test_memory_range_of_the_n_sweep():
    sweep = _json("cpu_sweep_N.json")
    mib = [next(r for r in p["rows"] if r["method"] == "mpruner")["peak_mem_bytes"] / 2**20 for p in sweep["points"]]
    assert f"{min(mib):.1f} to {max(mib):.1f} MiB" in README


def test_token_cka_ratio_to_the_gram_floor():
    rows = {r["method"]: r for r in _json("cpu_tokens.json")["rows"]}
    ratio = rows["mpruner token_cka"]["time_s"] / rows["gram floor"]["time_s"]
    commit = _json("cpu_tokens.json")["machine"]["git_commit"][:7]
    assert f"ran in {ratio:.2f}× the time of the bare per-sequence Gram GEMMs at commit {commit}" in README


def _reliability_rows():
    section = README.split("## Reliability", 1)
    if len(section) < 2:
        pytest.skip("no Reliability section")
    return section[1]


def test_reliability_counts_come_from_the_results():
    text = _reliability_rows()
    for name in ("fuzz_long.json", "properties_long.json"):
        path = RESULTS / "reliability" / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if name == "fuzz_long.json":
            total = sum(r["executions"] or 0 for r in data["rows"])
        else:
            total = sum(v["cases"] for v in data["properties"].values())
        assert f"{total:,}" in text, (name, total)


def test_mutation_counts_come_from_the_summary():
    # Each module's mutmut counts in the Reliability table are mutmut_summary.json's (written by
    # tools/mutation_summary.py from the verdict files): the run before the new tests, and
    # the last run, with its survivors explained as equivalent or left unexplained.
    text = _reliability_rows()
    path = RESULTS / "reliability" / "mutmut_summary.json"
    for module, m in json.loads(path.read_text())["modules"].items():
        short = module.rsplit("/", 1)[1]
        before = m.get("before_new_tests")
        if before:
            phrase = (f"`{short}` {before['mutants']} mutants, {before['checked']} checked: {before['killed']} killed, "
                      f"{before['survived']} survived")
            assert phrase in text, phrase
        run = m["run"]
        phrase = (f"`{short}` {run['mutants']} mutants, {run['checked']} checked: {run['killed']} killed, "
                  f"{run['survived']} survived ({len(m['equivalent'])} equivalent, {len(m['unexplained'])} "
                  f"unexplained)")
        assert phrase in text, phrase
    # and the whole row is the one tools/mutation_summary.py --readme prints
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_summary", RESULTS.parent.parent / "tools" / "mutation_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.readme_row(json.loads(path.read_text())) in text


def _section(title):
    return README.split(title, 1)[1].split("\n### ", 1)[0]


def test_engine_tables_come_from_the_results():
    eng = _json("engine_cpu.json")
    text = _section("### Engine speed")
    for r in eng["results"]:
        assert f"| {r['workload']} | {1e3 * r['engine_s']:.1f} ms | {1e3 * r['bare_gemm_s']:.1f} ms | " \
               f"{r['ratio']:.2f}× |" in text, r["workload"]
    assert f"commit {eng['machine']['commit'][:7]}" in text
    hooks = _section("### Where the engine's time goes")
    for r in eng["hook_path"]:
        assert f"| {1e3 * r['analyze_s']:.1f} ms | {1e3 * r['forward_update_s']:.1f} ms | {r['ratio']:.2f}× |" in hooks
    for r in _json("engine_versions_cpu.json")["results"]:
        assert f"{r['current']['ratio']:.2f}×" in text and f"{r['baseline']['ratio']:.2f}×" in text
    for r in _json("engine_profile_cpu.json")["results"]:
        assert f"{r['one_thread_gram']['time_ratio']:.2f}×" in text
        assert f"{r['profile']['shares']['gram_gemms']:.0%}" in text


def test_distributed_scaling_comes_from_the_results():
    d = _json("distributed_cpu.json")
    assert f"{d['ratio']:.2f}×" in README


@pytest.mark.parametrize("scenario", ["vision", "text"])
def test_pipeline_tables_come_from_the_results(scenario):
    d = _json(f"pipeline_{scenario}.json")
    text = README.split("### Results: depth, width and sparsity", 1)[1]
    assert f"commit\n{d['commit']}" in text or f"commit {d['commit']}" in text
    for r in d["rows"]:
        assert f"| {r['params']:,} | {r['nonzero']:,} | {r['macs'] / 1e6:.1f} M | {r['latency_ms']:.1f} | " \
               f"{r['metric']:.4f} | {r['drop_points']:+.1f} | {r['drop_points_vs_control']:+.1f} |" in text, r["row"]


def test_lm_overhead_table_comes_from_the_results():
    d = _json("lm_cpu.json")
    text = _section("### LM metric overhead")
    for r in d["results"]:
        if r["what"] == "kernel":
            continue
        assert f"| {r['baseline_seconds']:.2f} s | {r['seconds']:.2f} s | {100 * r['overhead']:+.1f} % | " \
               f"{100 * r['overhead_cpu']:+.1f} % |" in text, r["what"]


def test_lm_metric_rows_come_from_the_results():
    d = _json("cpu-lm-metrics_tokens.json")
    text = _section("### Token cosine and angular distance in the benchmark suite")
    assert d["machine"]["git_commit"][:7] in text
    for r in d["rows"]:
        assert f"| {r['method']} | {r['estimator']} |" in text
    rows = {r["method"]: r for r in d["rows"]}
    ratio = rows["mpruner token_cka"]["time_s"] / rows["gram floor"]["time_s"]
    assert f"token_cka ran in {ratio:.2f}× the time" in text

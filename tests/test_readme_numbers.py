"""Numbers quoted in README.md come from the committed results files."""
import json
import pathlib
import re

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

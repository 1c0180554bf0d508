"""The benchmark suite at small sizes as pytest-benchmark rows, and checks of its machinery.

    pytest benchmarks/ tests/bench/ --benchmark-only [--benchmark-json out.json]   # the timings
    pytest benchmarks/ tests/bench/                                                # + the checks below

Every row records, in ``extra_info``, the estimator it computes and its max abs error
against the float64 reference of that estimator. The full suite with peers in isolated
subprocesses, plots and goals is ``mpruner bench``; speed goals are never asserted.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import mpruner
from mpruner.bench import refs, runner
from mpruner.bench.core import Ctx
from mpruner.bench.methods import OWN_METHODS
from mpruner.bench.peers import PEER_METHODS, PEERS, installed_version
from mpruner.bench.workloads import WORKLOADS, Workload, make_source

SMALL = {"minibatch": WORKLOADS["dense-small"], "tokens": WORKLOADS["tokens-small"]}
METHODS = {**OWN_METHODS, **PEER_METHODS}
BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


@pytest.fixture(scope="module")
def cases():
    out = {}
    for kind, wl in SMALL.items():
        ctx = Ctx(wl, "cpu").hold()
        out[kind] = (ctx, refs.compute(ctx.source))
    return out


def _params():
    for name, m in METHODS.items():
        for kind in m.kinds:
            marks = []
            if m.peer and installed_version(m.peer) is None:
                marks.append(pytest.mark.skip(reason=f"{m.peer} not installed: pip install --no-deps -r "
                                                     "benchmarks/requirements-peers.txt"))
            yield pytest.param(name, kind, id=f"{SMALL[kind].name}-{name.replace(' ', '_')}", marks=marks)


@pytest.mark.parametrize("name,kind", list(_params()))
def test_method(benchmark, cases, name, kind):
    ctx, ref = cases[kind]
    m = METHODS[name]
    units = ctx.all_units(m.unit)
    benchmark.group = SMALL[kind].name
    benchmark.extra_info["estimator"] = m.estimator
    res = benchmark.pedantic(lambda: m.run(ctx, units), rounds=3, warmup_rounds=1, iterations=1)
    if m.estimator == "none":  # the Gram floor times GEMMs only: there is nothing to compare
        assert res.cka is None
        return
    assert res.cka is not None, f"{name} returned no CKA for {kind}; every row except the floor must compute one"
    kw = {"batches": ctx.all_units("batches")} if kind == "minibatch" else {"seq_ids": res.seq_ids}
    exp = refs.expected(ref, m.estimator, **kw)
    err = float((res.cka.double().cpu() - exp).abs().max())
    benchmark.extra_info["max_err"] = err
    assert err < 1e-3, f"{name} does not compute {m.estimator} (max err {err:.2e})"


# ---------------------------------------------------------------- the suite's own machinery
def _tiny(kind):
    if kind == "minibatch":
        return Workload("tiny", "minibatch", L=3, N=48, n=16, shape=(2, 5))
    return Workload("tiny-tokens", "tokens", L=3, B=5, min_len=5, max_len=9, D=6, seq_batch=2)


def test_reference_matches_mpruner_reference():
    src = make_source(_tiny("minibatch"), "cpu")
    got = refs.compute(src)
    batches = [[x.double() for x in src.batch(i)] for i in range(src.wl.num_batches)]
    want_mb = mpruner.reference.minibatch_cka(batches, unbiased=True)
    torch.testing.assert_close(refs.expected(got, "minibatch-u", batches=[0, 1, 2]), want_mb)
    torch.testing.assert_close(refs.expected(got, "lastbatch-u", batches=[0, 1]),
                               mpruner.reference.cka_matrix(batches[1], unbiased=True))
    whole = [torch.cat([b[l] for b in batches]) for l in range(3)]
    torch.testing.assert_close(got["full_b"], mpruner.reference.cka_matrix(whole, unbiased=False))

    tsrc = make_source(_tiny("tokens"), "cpu")
    got = refs.compute(tsrc)
    for j in range(tsrc.wl.num_batches):
        layers, mask = tsrc.batch(j)
        ids = tsrc.batches[j]
        for unbiased in (False, True):
            want = mpruner.reference.token_cka([h.double() for h in layers], mask, unbiased=unbiased)
            torch.testing.assert_close(refs.expected(got, "seq-u" if unbiased else "seq-b", seq_ids=ids), want)
        cos, ang = mpruner.reference.token_cosine([h.double() for h in layers], mask)
        torch.testing.assert_close(refs.expected(got, "tok-cos", seq_ids=ids), cos)
        torch.testing.assert_close(refs.expected(got, "tok-ang", seq_ids=ids), ang)


def test_sources_are_deterministic_and_structured():
    a, b = make_source(WORKLOADS["dense-small"], "cpu"), make_source(WORKLOADS["dense-small"], "cpu")
    for x, y in zip(a.batch(1), b.batch(1)):
        assert torch.equal(x, y)
    c = refs.expected(refs.compute(a), "minibatch-u", batches=[0, 1, 2, 3])
    off = c[~torch.eye(c.shape[0], dtype=torch.bool)]
    assert 0.2 < off.min() < 0.9 and off.max() < 0.99  # non-trivial CKA, never all 0 or all 1
    t = make_source(WORKLOADS["tokens-small"], "cpu")
    layers, mask = t.batch(0)
    for row, b in enumerate(t.batches[0]):
        n = t.lengths[b]
        assert int(mask[row].sum()) == n
        assert torch.equal(torch.stack([h[row, :n] for h in layers]), t.sequence(b))


def test_requirements_file_lists_the_peers():
    with open(os.path.join(BENCHMARKS, "requirements-peers.txt")) as f:
        listed = {l.split("#")[0].strip() for l in f if l.split("#")[0].strip()}
    want = {f"{p.dist}=={p.version}" for p in PEERS.values()} | {e for p in PEERS.values() for e in p.extras}
    assert listed == want


@pytest.mark.parametrize("mode,status", [("hang", "timeout"), ("crash", "crashed"), ("raise", "error"),
                                         ("alloc", "oom")])
def test_misbehaving_task_becomes_a_status(tmp_path, mode, status):
    # The cap sits well above what importing torch takes (a CUDA build of torch alone is ~1 GiB
    # resident), and the "alloc" task asks for twice the cap. The tasks that end by themselves get
    # a time limit no loaded machine reaches (they take seconds; the limit only stops a task that
    # never ends), the hanging one a short limit: it hangs however fast the machine.
    cfg = runner.Config(timeout_s=600 if mode != "hang" else 3, mem_cap_bytes=2 * 2**30, work_dir=str(tmp_path),
                        verbose=False)
    row = runner.spawn(cfg, {"task": "_selftest", "mode": mode, "mib": 4096}, mode)
    assert row["status"].startswith(status), row


def test_cli_writes_table_json_and_plot(tmp_path, request):
    if request.config.getoption("benchmark_disable"):
        # It times rows and waits for a quiet machine: part of `make bench`, not of the untimed test run.
        pytest.skip("times the benchmark rows; runs with make bench (pytest benchmarks/ tests/bench/ --benchmark-only)")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mpruner", "bench", "--workload", "dense-small", "--peers", "none", "--repeats", "1",
           "--budget", "5", "--no-profile", "--out", str(out), "--methods", "mpruner,torch baseline,gram floor"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # only stops a run that never ends
    assert p.returncode == 0, p.stdout + p.stderr
    assert "x mpruner" in p.stdout
    with open(out / "cpu_dense-small.json") as f:
        res = json.load(f)
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["mpruner"]["status"] == "ok" and rows["mpruner"]["max_err"] < 1e-6
    assert res["machine"]["torch"] == torch.__version__ and "git_commit" in res["machine"]
    assert (out / "cpu_headline.png").stat().st_size > 0


def test_plot_and_table_show_one_ratio_per_row(monkeypatch, tmp_path):
    """The headline plot labels each bar with the ratio its table row shows (mpruner's row of
    the same estimator, else the default mpruner row, marked *)."""
    import matplotlib.axes

    from mpruner.bench import tables

    rows = [{"method": m, "group": g, "estimator": e, "status": "ok", "time_s": t}
            for m, g, e, t in [("mpruner token_cka", "mpruner", "seq-b", 0.01), ("mpruner cosine", "mpruner",
                               "tok-cos", 0.276), ("torch cosine", "baseline", "tok-cos", 0.552),
                               ("per-sequence loop", "baseline", "seq-b", 1.0), ("gram floor", "floor", "none", 0.005)]]
    runner.add_ratios(rows, _tiny("tokens"))
    res = {"workload": {"name": "tiny-tokens", "kind": "tokens", "description": "tiny"}, "rows": rows}
    labels = {}
    real_text = matplotlib.axes.Axes.text

    def text(ax, x, y, s, *a, **k):
        labels[s.split("  (")[0]] = s
        return real_text(ax, x, y, s, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    tables.plot_headline({"tiny-tokens": res}, str(tmp_path / "p.png"), "t")
    table = {line.split()[0] + " " + line.split()[1]: line for line in tables.table(res).splitlines()[2:]}
    for r in rows:
        ratio, _, fallback = tables.display_ratio(r)
        shown = tables.fmt_ratio(ratio) + "x" + ("*" if fallback else "")
        assert f"({shown})" in labels[tables.fmt_time(r["time_s"])], (r["method"], labels)
        assert f"{ratio:.2f}{'*' if fallback else ''}" in table[" ".join(r["method"].split()[:2])]
    assert tables.display_ratio(rows[1])[0] == 1.0  # mpruner cosine against itself, as in its table row
    assert tables.display_ratio(rows[4])[2]         # the floor: no mpruner row of its estimator


def test_precision_rows_are_chosen_by_the_option(monkeypatch):
    from mpruner.bench import suite
    from mpruner.engine import precision

    monkeypatch.setenv(precision.FORCE_ENV, "0")
    assert suite.precisions("auto", "cpu") == ["highest"]
    monkeypatch.setenv(precision.FORCE_ENV, "1")
    assert suite.precisions("auto", "cpu") == ["highest", "high", "medium"]
    assert suite.precisions("highest,tf32,high", "cpu") == ["highest", "high"]
    with pytest.raises(SystemExit, match="--precision: precision must be one of"):
        suite.precisions("fp8", "cpu")
    cfg = runner.Config(precisions=["highest", "medium"], verbose=False)
    names = [m.name for m in runner.methods_for(SMALL["minibatch"], cfg)]
    assert "mpruner medium" in names and "mpruner high" not in names and "mpruner" in names

"""Behaviours whose bugs no other test would catch: boundaries, rounding, modes, merges, formats."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R
from mpruner.analysis.result import Analysis
from mpruner.prune import auto_threshold

from tests.helpers import np_reference as NP
from tests.helpers import prune_job


def _chain(adjacent):
    L = len(adjacent) + 1
    m = torch.eye(L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1, L):
            m[i, j] = m[j, i] = math.prod(adjacent[i:j])
    return m


# ---------------------------------------------------------------- clustering and thresholds
@pytest.mark.parametrize("method", ["anchor", "adjacent"])
def test_cluster_joins_at_exactly_the_threshold(method):
    m = _chain([0.5, 0.5])
    m[0, 1] = m[1, 0] = 0.75  # exactly representable: >= joins, > would not
    assert mpruner.cluster_layers(m, 0.75, method) == [[0, 1], [2]]
    assert mpruner.cluster_layers(m, 0.75 + 1e-12, method) == [[0], [1], [2]]


def test_auto_threshold_rounds_down_to_its_step():
    assert auto_threshold(_chain([0.9876, 0.5])) == pytest.approx(0.985)   # down, never up to 0.99
    assert auto_threshold(_chain([0.9876, 0.5]), step=0.01) == pytest.approx(0.98)
    assert auto_threshold(_chain([0.93, 0.5]), floor=0.95) == 0.95          # never below the floor
    # the rounded threshold still lets the most similar pair join
    m = _chain([0.9876, 0.5])
    assert mpruner.cluster_layers(m, auto_threshold(m)) == [[0, 1], [2]]
    assert auto_threshold(_chain([0.99, 0.999]), exclude=[2]) == pytest.approx(0.99)


# ---------------------------------------------------------------- the loop's accept rule
def _pruner(tolerance, mode):
    model, train, _ = prune_job.build()
    return mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", tolerance=tolerance,
                           tolerance_mode=mode, progress=False)


def test_tolerance_modes_accept_at_their_bound():
    absolute, relative = _pruner(0.25, "absolute"), _pruner(0.25, "relative")
    absolute.metric_before = relative.metric_before = 0.5  # bounds exact in binary: 0.25 and 0.375
    assert absolute.accepts(0.25) and not absolute.accepts(0.2499)        # 0.5 - 0.25
    assert relative.accepts(0.375) and not relative.accepts(0.3749)       # 0.5 * (1 - 0.25)
    assert absolute.accepts(0.3) and not relative.accepts(0.3)            # the modes differ
    assert not absolute.accepts(float("nan")) and not relative.accepts(None)


# ---------------------------------------------------------------- accumulator merges
def test_merge_adds_skipped_batches_in_every_case(gen):
    x = torch.randn(8, 3, generator=gen)
    nan = x.clone()
    nan[0, 0] = float("nan")

    def acc(batches):
        a = mpruner.CKAAccumulator(nan_policy="skip")
        for b in batches:
            a.update([b, b * 2 + 1])
        return a

    assert acc([x, nan]).merge(acc([nan, nan, x])).num_skipped == 3      # both hold batches
    assert acc([nan]).merge(acc([x, nan])).num_skipped == 2              # this one only skipped
    assert acc([x]).merge(acc([nan, nan])).num_skipped == 2              # the other only skipped
    merged = acc([nan]).merge(acc([x]))
    assert merged.num_batches == 1 and merged.num_samples == 8


@pytest.mark.parametrize("kw", [{"kernel": "rbf"}, {"unbiased": False}, {"estimator": "exact"},
                                {"kernel": "rbf", "sigma": 0.3}])
def test_merge_refuses_other_options(gen, kw):
    x = torch.randn(8, 3, generator=gen)
    base = {"kernel": "rbf"} if "sigma" in kw else {}
    a, b = mpruner.CKAAccumulator(**base), mpruner.CKAAccumulator(**kw)
    a.update([x, x + 1])
    b.update([x, x + 1])
    with pytest.raises(ValueError, match="different options"):
        a.merge(b)
    with pytest.raises(TypeError, match="CKAAccumulator"):
        a.merge({"hsic": 1})


def test_merge_refuses_other_layers(gen):
    x = torch.randn(8, 3, generator=gen)
    a, b = mpruner.CKAAccumulator(), mpruner.CKAAccumulator()
    a.update([x, x + 1])
    b.update([x, x + 1, x * 3])
    with pytest.raises(ValueError, match="different layers"):
        a.merge(b)


# ---------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_center_gram_matches_numpy_and_its_definition(seeded_gen, unbiased):
    x = torch.randn(9, 4, generator=seeded_gen, dtype=torch.float64) + 5
    k = x @ x.T
    got = R.center_gram(k, unbiased)
    np.testing.assert_allclose(got.numpy(), NP.center(k.numpy(), unbiased), atol=1e-10, rtol=0)
    if unbiased:
        assert torch.all(torch.diagonal(got) == 0)
        n = k.shape[0]
        np.testing.assert_allclose(float((got * got).sum()) / (n * (n - 3)),
                                   NP.hsic(k.numpy(), k.numpy(), True), rtol=1e-9, atol=0)
    else:
        np.testing.assert_allclose(got.sum(0).numpy(), 0, atol=1e-9, rtol=0)  # HKH has zero row/column sums
    batched = R.center_gram(torch.stack([k, 2 * k]), unbiased)  # leading dimensions broadcast
    torch.testing.assert_close(batched[1], 2 * got, rtol=1e-12, atol=1e-10)


# ---------------------------------------------------------------- token CKA, precision
def test_token_cka_constant_layer_is_nan_with_a_warning(gen):
    hs = [torch.randn(2, 7, 5, generator=gen) for _ in range(3)]
    hs[1][0] = 3.0  # layer 1 constant over sequence 0's tokens only
    with pytest.warns(RuntimeWarning, match="constant"):
        got = mpruner.token_cka(hs)
    assert torch.isnan(got[0, 1]).all() and torch.isnan(got[0, :, 1]).all()
    assert not torch.isnan(got[0, 0, 2]) and not torch.isnan(got[1]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without a constant layer
        mpruner.token_cka([h[1:] for h in hs])


@pytest.mark.parametrize("fn", ["gram", "cka_matrix", "cka"])
def test_precision_tf32_is_accepted_and_exact_off_cuda(device, gen, fn):
    xs = [torch.randn(12, 6, generator=gen).to(device) + 2 for _ in range(2)]
    call = {"gram": lambda p: mpruner.gram(xs[0], precision=p),
            "cka_matrix": lambda p: mpruner.cka_matrix(xs, precision=p),
            "cka": lambda p: mpruner.cka(*xs, precision=p)}[fn]
    highest, tf32 = call("highest"), call("tf32")
    if device.type == "cuda":  # TF32 keeps 10 mantissa bits
        torch.testing.assert_close(tf32, highest, rtol=0, atol=5e-3 * float(highest.abs().max()))
    else:
        assert torch.equal(tf32, highest)  # the mode only exists for CUDA float32 GEMMs
    assert not torch.backends.cuda.matmul.allow_tf32  # the global setting is restored
    with pytest.raises(ValueError, match="precision must be one of"):
        call("fast")


# ---------------------------------------------------------------- Analysis files
def _write(tmp_path, **change):
    data = Analysis(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), ["a", "b"], 10, {"view": "mean"}).to_dict()
    data.update(change)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("change,message", [
    ({"cka": [[1.0, 0.5, 0.5, 1.0]]}, "2 x 2 list of rows"),            # 1x4 with 2 names (was read as 2x2)
    ({"cka": [[1.0, 0.5, 0.1], [0.5, 1.0, 0.1]]}, "2 x 2 list of rows"),  # 2x3 (was a bare RuntimeError)
    ({"layer_names": "ab"}, "list of strings"),                       # (was split into letters)
    ({"layer_names": [1, 2]}, "list of strings"),
    ({"cka": [[1.0, "x"], [0.5, 1.0]]}, "numbers or null"),
    ({"cka": "1,0.5"}, "list of rows"),
    ({"num_samples": "10"}, "num_samples"),
    ({"num_samples": -1}, "num_samples"),
    ({"options": [1]}, "options"),
    ({"other_layer_names": ["x"]}, "2 x 1"),
])
def test_analysis_load_refuses_malformed_content(tmp_path, change, message):
    path = _write(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as info:
        Analysis.load(path)
    assert path in str(info.value)


def test_analysis_load_names_a_missing_key(tmp_path):
    data = json.loads(open(_write(tmp_path)).read())
    del data["num_samples"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing key 'num_samples'"):
        Analysis.load(str(tmp_path / "b.json"))


def test_analysis_roundtrip_keeps_nan(tmp_path):
    a = Analysis(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), ["a", "b"], 3)
    a.save(str(tmp_path / "r.json"))
    b = Analysis.load(str(tmp_path / "r.json"))
    assert torch.equal(torch.isnan(b.cka), torch.isnan(a.cka)) and b.layer_names == ["a", "b"]


# ---------------------------------------------------------------- resume with other options
@pytest.mark.parametrize("change", [{"max_iterations": 1}, {"threshold": 0.9}, {"tolerance": 0.2}])
def test_resume_with_other_options_is_refused_naming_them(tmp_path, change):
    model, train, evald = prune_job.build()
    base = dict(layers="blocks", threshold=0.95, tolerance=0.05, view="flatten", progress=False,
                checkpoint_dir=tmp_path, max_iterations=3)
    mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, **base).run()
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"other options \({key}: .* in the checkpoint, .* now\)"):
        mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, **{**base, **change}).run(resume=True)


# ---------------------------------------------------------------- mutants of cluster.py that survived
def test_cluster_compares_in_float64():
    # 0.97999999 is below 0.98 in float64 but rounds up to 0.98000002 in float32.
    m = [[1.0, 0.97999999], [0.97999999, 1.0]]
    assert mpruner.cluster_layers(m, 0.98) == [[0], [1]]
    assert mpruner.cluster_layers(torch.tensor(m, dtype=torch.float64), 0.98) == [[0], [1]]


def test_cluster_and_select_defaults_and_threshold_range():
    m = _chain([0.985, 0.5])
    assert mpruner.cluster_layers(m) == mpruner.cluster_layers(m, 0.98) == [[0, 1], [2]]  # default 0.98
    assert mpruner.cluster_layers(torch.ones(3, 3), 1.0) == [[0, 1, 2]]                  # 1 is allowed
    for bad in (0, 0.0, -0.5, 1.0000001, "0.9"):
        with pytest.raises(ValueError, match="threshold"):
            mpruner.cluster_layers(m, bad)
    clusters = [[0, 1, 2, 3], [4, 5]]
    assert mpruner.redundant_members(clusters) == mpruner.redundant_members(clusters, 1) == [1, 2, 3, 5]


def test_auto_threshold_without_candidates_is_one():
    assert auto_threshold(torch.ones(1, 1)) == 1.0                      # a single layer: nothing to pair
    assert auto_threshold(_chain([0.99, 0.99]), exclude=[1, 2]) == 1.0   # every later layer excluded
    nan = _chain([0.99])
    nan[0, 1] = nan[1, 0] = float("nan")
    assert auto_threshold(nan) == 1.0


def test_analysis_repr():
    a = Analysis(torch.eye(2), ["a", "b"], 10, {"view": "mean", "layers": "blocks"})
    assert repr(a) == "Analysis(2x2 CKA, layers='blocks', view='mean', num_samples=10)"
    assert repr(Analysis(torch.eye(1), ["a"], 3)) == "Analysis(1x1 CKA, layers='?', view='?', num_samples=3)"

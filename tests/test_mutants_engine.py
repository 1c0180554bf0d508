"""Tests that kill mutants of mpruner/engine/cka.py which survived mutmut.

Each test names the mutants it kills (mutmut's names without the module prefix;
benchmarks/results/reliability/mutmut_cka.txt has their diffs). tests/test_mutants.py holds
the earlier ones (gram's and hsic's input errors word for word).
"""
import importlib
import warnings

import pytest
import torch
from tests.helpers.caller_frame import warned_at_caller

import mpruner
from mpruner.engine import reference as R

C = importlib.import_module("mpruner.engine.cka")  # the module (mpruner.engine.cka is also the function)


def _x(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5).to(dtype)


# x_gram__mutmut_66 (the op asked for the upper triangle only): gram returns the whole
# symmetric Gram, at a size where the op computes the triangle by blocks.
def test_gram_is_the_full_matrix():
    x = _x(200, 7, 0)
    g = mpruner.gram(x)
    torch.testing.assert_close(g, R.gram(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(g, g.T, rtol=0, atol=1e-12)  # symmetric (a BLAS need not make it bitwise so)


# x_hsic__mutmut_25: mixed devices are refused naming both (the meta device stands in for a GPU).
def test_hsic_mixed_devices():
    with pytest.raises(ValueError) as info:
        mpruner.hsic(torch.ones(4, 4), torch.ones(4, 4, device="meta"))
    assert str(info.value) == "k is on cpu but l is on meta; move both to one device"


# x_layer_hsic__mutmut_7 / _24 (the second layer's device or n): a single layer works.
def test_cka_matrix_of_one_layer():
    assert mpruner.cka_matrix([_x(6, 3, 1)]).tolist() == [[pytest.approx(1.0, abs=1e-12)]]


# x_layer_hsic__mutmut_25 / _28..30 / _33 / _36 / _43 / _45 / _50 / _53..57 / _60: the
# degeneracy threshold is (DEGENERATE_FACTOR eps^2 s)^2, eps of the Grams' dtype, s the mean
# squared norm of the first min(n, 8) samples (linear) or 1 (RBF, whose values are at most 1).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d", [(12, 3), (5, 9)])  # n > 8 with d < 8 (m is 8, not d), and n < 8
def test_degeneracy_thresholds(dtype, n, d):
    xs = [_x(n, d, 2, dtype) * 3, _x(n, d, 3, dtype)]
    eps = torch.finfo(dtype).eps
    m = min(n, 8)
    _, thr = C.layer_hsic(xs, "linear", False, 0.5, "highest")
    s = torch.stack([x[:m].double().pow(2).sum() / m for x in xs])
    assert thr.dtype == torch.float64
    torch.testing.assert_close(thr, (C.DEGENERATE_FACTOR * eps * eps * s) ** 2, rtol=1e-12, atol=0)
    _, thr = C.layer_hsic(xs, "rbf", False, 0.5, "highest")
    assert thr.dtype == torch.float64
    assert thr.tolist() == [(C.DEGENERATE_FACTOR * eps * eps) ** 2] * 2


# x_hsic_to_cka__mutmut_4 (< for <=): an all-zero layer (self-HSIC 0, threshold 0) is
# degenerate: NaN with the warning, not a silent 0/0. _37 / _44..46: the warning lists the
# layers, comma-separated, word for word.
def test_zero_layers_are_degenerate_and_named():
    xs = [torch.zeros(6, 2, dtype=torch.float64), _x(6, 3, 4), torch.zeros(6, 1, dtype=torch.float64)]
    with pytest.warns(RuntimeWarning) as record:
        c = mpruner.cka_matrix(xs)
    assert torch.isnan(c[0]).all() and torch.isnan(c[:, 2]).all() and c[1, 1] == pytest.approx(1.0)
    assert str(record[0].message) == ("features[0], features[2]: zero HSIC with itself (the layer is constant on "
                                      "these samples), so its CKA is undefined; its row and column are NaN")


# x_hsic_to_cka__mutmut_43 / _47 (stacklevel): the warning points at the user's line, from
# each public entry point.
@pytest.mark.parametrize("call", [
    lambda x, z: mpruner.cka_matrix([x, z]),
    lambda x, z: mpruner.cka(x, z),
    lambda x, z: _accumulated(x, z),
])
def test_degenerate_warning_points_at_the_caller(call):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        call(_x(6, 3, 5), torch.ones(6, 2, dtype=torch.float64))
    mine = [w for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(mine) == 1 and warned_at_caller(mine[0], __file__)


def _accumulated(x, z):
    acc = mpruner.CKAAccumulator()
    acc.update([x, z])
    return acc.compute()


# x_cka_matrix__mutmut_9, x__cka_matrix__mutmut_10 / _11, x_cka__mutmut_13: sigma reaches the
# RBF Grams through cka_matrix and cka.
def test_sigma_reaches_the_rbf_kernel():
    a, b = _x(9, 3, 6), _x(9, 4, 7)
    want = R.cka(a, b, "rbf", False, 0.3)
    assert abs(float(want) - float(R.cka(a, b, "rbf", False, 0.5))) > 1e-3
    assert float(mpruner.cka_matrix([a, b], "rbf", sigma=0.3)[0, 1]) == pytest.approx(float(want), abs=1e-10)
    assert float(mpruner.cka(a, b, "rbf", sigma=0.3)) == pytest.approx(float(want), abs=1e-10)


# x__cka_matrix__mutmut_3 / _7 / _8 / _16 / _19 / _20 / _26 / _29 / _30 / _33 / _35 / _39,
# x_cka__mutmut_26 / _27: cka_matrix's and cka's input errors name the argument as the user
# wrote it, word for word.
@pytest.mark.parametrize("call, error, message", [
    (lambda: mpruner.cka_matrix([_x(4, 2, 0)], kernel="x"), ValueError,
     "kernel must be one of 'linear', 'rbf'; got 'x'"),
    (lambda: mpruner.cka_matrix(_x(4, 2, 0)), TypeError,
     "features must be a list of tensors (one per layer), got a single tensor; wrap it: [features]"),
    (lambda: mpruner.cka_matrix([_x(4, 2, 0)], other=_x(4, 2, 0)), TypeError,
     "other must be a list of tensors (one per layer), got a single tensor; wrap it: [other]"),
    (lambda: mpruner.cka_matrix([_x(3, 2, 0)], unbiased=True), ValueError,
     "features has n=3 samples; the unbiased estimator needs n >= 4: use unbiased=False or a larger batch"),
    (lambda: mpruner.cka(_x(4, 2, 0), _x(5, 2, 0)), ValueError,
     "y has 5 samples but x has 4; every layer must see the same samples (same n)"),
])
def test_cka_matrix_errors_word_for_word(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


# x__cka_matrix__mutmut_59 / _64..67 (the NaN check dropped, or its error without the layers),
# x_cka__mutmut_26 / _27 (y's label): NaN in a layer is a NonFiniteError naming it.
@pytest.mark.parametrize("which", ["cka_matrix", "cka"])
def test_nonfinite_layer_is_named(which):
    x, bad = _x(5, 2, 0), _x(5, 2, 1)
    bad[2, 1] = float("nan")
    with pytest.raises(C.NonFiniteError) as info:
        mpruner.cka_matrix([x, bad]) if which == "cka_matrix" else mpruner.cka(x, bad)
    name = "features[1]" if which == "cka_matrix" else "y"
    assert info.value.layers == [name]
    assert str(info.value).startswith(f"NaN or Inf in the activations of {name}; fix the model/inputs")


# mpruner.stacklevel: warnings raised deep inside (analyze's sink, an adapter's guess) point
# at the user's line too, however many mpruner frames lie between.
def test_deep_warnings_point_at_the_caller():
    import torch.nn as nn

    class Stack(nn.Module):  # a fresh class: the adapter guess warns once per class
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))

        def forward(self, x):
            return self.blocks(x)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mpruner.find_blocks(Stack())
        mpruner.analyze(Stack(), [torch.randn(6, 3), torch.randn(1, 3)], layers="blocks", progress=False)
    messages = [w for w in record if "no mpruner adapter recognises" in str(w.message) or "skipped 1 batch" in
                str(w.message)]
    assert len(messages) == 2 and all(warned_at_caller(w, __file__) for w in messages), \
        [(str(w.message)[:40], w.filename) for w in record]

"""The public CKA functions (mpruner/engine/cka.py) against float64 NumPy and the PyTorch
reference: gram, center_gram, hsic, cka, cka_matrix; degenerate layers; the RBF bandwidth
of the canonical CKA reference (Kornblith et al. 2019, gram_rbf): the median of all n^2
squared distances, diagonal zeros included, np.median's even-count mean."""
import importlib
import warnings

import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R
from tests.helpers import np_reference as NP
from tests.helpers.caller_frame import warned_at_caller
from tests.helpers.layer_data import structured_layers

C = importlib.import_module("mpruner.engine.cka")  # the module (mpruner.engine.cka is also the function)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Absolute tolerance on CKA values (in [0, 1]) by input dtype, against float64 NumPy on
# the same (already rounded) inputs. Observed over tests/helpers/layer_data.SEEDS with offset 100:
# float64 <= 5e-15, float32/float16/bfloat16 <= 3e-8 (half types are computed in
# float32, the accumulation in float64). The float32 bound still fails an uncentred
# float32 Gram (~7e-5, test_uncentred_float32_gram_fails_the_tolerance) and any Gram
# computed in half precision (~1e-2).
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-6, torch.bfloat16: 1e-6}


def _np(feats):
    return [f.double().cpu().numpy() for f in feats]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cka_matrix_matches_numpy(device, seeded_gen, kernel, unbiased, dtype):
    feats = structured_layers(seeded_gen)
    expected = NP.cka_matrix(_np([f.to(dtype) for f in feats]), kernel, unbiased)
    got = mpruner.cka_matrix([f.to(dtype).to(device) for f in feats], kernel, unbiased)
    assert got.dtype == torch.float64 and got.shape == (4, 4)
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=TOL[dtype], rtol=0)
    assert 0.05 < expected[0, 3] < 0.95  # the data is not trivially (dis)similar


def test_uncentred_float32_gram_fails_the_tolerance(seeded_gen):
    # The tolerance above must be able to fail: a float32 Gram of the raw (offset 100)
    # samples, centred afterwards, is what a missing feature centering computes.
    feats = [f.float() for f in structured_layers(seeded_gen)]
    n = feats[0].shape[0]
    h = torch.eye(n) - 1.0 / n
    centred = [h @ (f @ f.T) @ h for f in feats]
    hs = torch.stack([torch.stack([(a * b).sum() for b in centred]) for a in centred]).double()
    wrong = R.cka_from_hsic(hs).numpy()
    err = np.abs(wrong - NP.cka_matrix(_np(feats))).max()
    assert err > 10 * TOL[torch.float32]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gram_center_hsic_match_numpy(device, seeded_gen, kernel, unbiased):
    x, y = structured_layers(seeded_gen, dims=(10, 7))[:2]
    kx = mpruner.gram(x.to(device), kernel)
    ky = mpruner.gram(y.to(device), kernel)
    # Linear Grams are of feature-centered samples: compare after centering.
    np.testing.assert_allclose(mpruner.center_gram(kx, unbiased).cpu().numpy(),
                               NP.center(NP.gram(x.numpy(), kernel), unbiased), atol=1e-9, rtol=1e-9)
    h = mpruner.hsic(kx, ky, unbiased)
    assert h.dim() == 0 and h.dtype == torch.float64
    np.testing.assert_allclose(h.item(), NP.hsic(NP.gram(x.numpy(), kernel), NP.gram(y.numpy(), kernel), unbiased),
                               rtol=1e-9)
    np.testing.assert_allclose(mpruner.cka(x.to(device), y.to(device), kernel, unbiased).item(),
                               NP.cka_matrix(_np([x, y]), kernel, unbiased)[0, 1], atol=1e-10, rtol=0)


def test_rbf_gram_matches_numpy_and_sigma(gen):
    x = structured_layers(gen, dims=(9,))[0]
    for sigma in (0.2, 0.5, 1.0):
        np.testing.assert_allclose(mpruner.gram(x, "rbf", sigma).numpy(), NP.gram(x.numpy(), "rbf", sigma),
                                   atol=1e-12, rtol=0)


def test_batched_gram_and_hsic(device, gen):
    xs = torch.randn(3, 20, 4, 5, generator=gen, dtype=torch.float64).to(device) + 1
    g = mpruner.gram(xs, batched=True)
    assert g.shape == (3, 20, 20)
    for i in range(3):
        np.testing.assert_allclose(mpruner.center_gram(g[i]).cpu().numpy(),
                                   NP.center(NP.gram(xs[i].cpu().numpy())), atol=1e-10, rtol=0)
    h = mpruner.hsic(g, g.flip(0), unbiased=True)
    assert h.shape == (3,)
    for i in range(3):
        assert torch.allclose(h[i], mpruner.hsic(g[i], g[2 - i], unbiased=True))


def test_matches_torch_reference(gen):
    feats = structured_layers(gen)
    for unbiased in (False, True):
        assert torch.allclose(mpruner.cka_matrix(feats, unbiased=unbiased), R.cka_matrix(feats, unbiased=unbiased),
                              atol=1e-12, rtol=0)


def test_cross_matrix(device, gen):
    feats = structured_layers(gen, dims=(5, 6, 7, 8, 9))
    a, b = feats[:3], feats[3:]
    got = mpruner.cka_matrix([f.to(device) for f in a], other=[f.to(device) for f in b])
    assert got.shape == (3, 2)
    full = NP.cka_matrix(_np(feats))
    np.testing.assert_allclose(got.cpu().numpy(), full[:3, 3:], atol=1e-10, rtol=0)


@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_and_invariances(device, gen, unbiased):
    x = structured_layers(gen, n=50, dims=(16,), dtype=torch.float32)[0].to(device)
    y = structured_layers(gen, n=50, dims=(11,), dtype=torch.float32)[0].to(device)
    assert abs(mpruner.cka(x, x, unbiased=unbiased).item() - 1) < 1e-5
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    base = mpruner.cka(x, y, unbiased=unbiased).item()
    rotated = mpruner.cka(x @ q.to(device), y, unbiased=unbiased).item()
    scaled = mpruner.cka(7.5 * x, y, unbiased=unbiased).item()
    shifted = mpruner.cka(x + 100.0, y, unbiased=unbiased).item()
    assert abs(rotated - base) < 1e-5 and abs(scaled - base) < 1e-5 and abs(shifted - base) < 1e-4


def test_non_contiguous_inputs(device, gen):
    feats = structured_layers(gen, dims=(8, 10, 12))
    nc = [f.to(device).T.contiguous().T for f in feats]          # column-major
    sl = [torch.stack([f, -f], 2).to(device)[..., 0] for f in feats]  # strided view
    assert not nc[0].is_contiguous() and not sl[0].is_contiguous()
    expected = NP.cka_matrix(_np(feats))
    for variant in (nc, sl):
        np.testing.assert_allclose(mpruner.cka_matrix(variant).cpu().numpy(), expected, atol=1e-10, rtol=0)


def test_conv_shaped_features(gen):
    maps = [torch.randn(12, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    maps.append(maps[0] * 2 + 0.1 * torch.randn(12, 3, 4, 4, generator=gen, dtype=torch.float64))
    expected = NP.cka_matrix([m.reshape(12, -1).numpy() for m in maps])
    np.testing.assert_allclose(mpruner.cka_matrix(maps).numpy(), expected, atol=1e-10, rtol=0)


def test_activations_that_require_grad_are_measured_detached(gen):
    # A forward pass outside torch.no_grad gives activations that require grad; every
    # entry point reads them detached (the kernels have no backward) and gives the same numbers.
    feats = [f.float() for f in structured_layers(gen, n=24)]
    live = [f.clone().requires_grad_(True) for f in feats]
    tokens = [f.reshape(4, 6, -1) for f in feats]
    live_tokens = [f.clone().requires_grad_(True) for f in tokens]
    k, lk = mpruner.gram(feats[0]), mpruner.gram(live[0])
    pairs = [
        (mpruner.cka_matrix(feats, unbiased=True), mpruner.cka_matrix(live, unbiased=True)),
        (mpruner.cka(feats[0], feats[1]), mpruner.cka(live[0], live[1])),
        (k, lk),
        (mpruner.center_gram(k), mpruner.center_gram(lk.clone().requires_grad_(True))),
        (mpruner.token_cka(tokens), mpruner.token_cka(live_tokens)),
    ]
    for estimator in ("minibatch", "exact"):
        a, b = mpruner.CKAAccumulator(estimator=estimator), mpruner.CKAAccumulator(estimator=estimator)
        a.update(feats)
        b.update(live)
        pairs.append((a.compute(), b.compute()))
    for want, got in pairs:
        assert not got.requires_grad
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# gram: a (b, n) batch is b sets of n one-feature samples; RBF takes n = 2. center_gram
# computes half Grams in float32; hsic and cka default to the biased estimator; a batched hsic
# of mixed float32/float64 Grams is computed in float64; nonfinite_error lists the layers and
# the batch.
def test_cka_api_edges():
    import torch

    import mpruner
    from mpruner.engine import reference as R
    from mpruner.engine.cka import nonfinite_error

    x = torch.randn(2, 5, dtype=torch.float64)
    g = mpruner.gram(x, batched=True)
    assert g.shape == (2, 5, 5) and torch.allclose(g[1], R.gram(x[1][:, None]), rtol=0, atol=1e-12)
    assert mpruner.gram(torch.randn(2, 3), "rbf").shape == (2, 2)
    # n = 4 (unbiased) and n = 2 (biased) are enough: the bound is n >= the minimum
    assert mpruner.center_gram(torch.eye(4), True).shape == (4, 4) and mpruner.center_gram(torch.eye(2)).shape == (2, 2)
    k = mpruner.gram(torch.randn(6, 3, dtype=torch.float64))
    assert mpruner.center_gram(k.half()).dtype == torch.float32
    l = mpruner.gram(torch.randn(6, 3, dtype=torch.float64))
    assert abs(float(mpruner.hsic(k, l)) - float(R.hsic(k, l, False))) < 1e-12
    kb = torch.stack([k, l])  # batched, mixed float32/float64: computed in float64
    h = mpruner.hsic(kb.float(), kb.flip(0))
    assert h.dtype == torch.float64 and torch.allclose(h, torch.stack([R.hsic(k.float().double(), l, False),
                                                                       R.hsic(l.float().double(), k, False)]),
                                                       rtol=1e-6, atol=0)
    xs = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    assert abs(float(mpruner.cka(*xs)) - float(R.cka(*xs))) < 1e-12
    e = nonfinite_error([0, 2], ["a", "b", "c"], batch=3)
    assert e.layers == ["a", "c"] and e.batch == 3 and str(e).startswith("NaN or Inf in the activations of a, c; fix")
    assert str(e).endswith("or with CKAAccumulator pass nan_policy='skip' to drop such batches")


# The argument names in gram's input errors ("x", "x[i]"); center_gram and hsic take n from
# the last dimension: a 4-d Gram batch, where shape[1] is not n.
def test_gram_names_and_4d_gram_batches():
    import torch

    import mpruner
    from mpruner.engine import reference as R

    with pytest.raises(TypeError) as info:
        mpruner.gram(torch.ones(4, 3, dtype=torch.long))
    assert str(info.value) == "x has dtype torch.int64; CKA needs floating-point activations: pass x.float()"
    with pytest.raises(TypeError) as info:
        mpruner.gram(torch.ones(2, 4, 3, dtype=torch.long), batched=True)
    assert str(info.value) == "x[0] has dtype torch.int64; CKA needs floating-point activations: pass x[0].float()"
    g = torch.stack([mpruner.gram(torch.randn(5, 3, dtype=torch.float64)) for _ in range(6)]).reshape(2, 3, 5, 5)
    c = mpruner.center_gram(g, True)  # n = 5 >= 4; shape[1] = 3 would refuse
    assert c.shape == (2, 3, 5, 5)
    torch.testing.assert_close(c[1, 2], R.center_gram(g[1, 2], True), rtol=0, atol=1e-12)
    h = mpruner.hsic(g, g.flip(1))
    assert h.shape == (2, 3)
    assert abs(float(h[1, 0]) - float(R.hsic(g[1, 0], g[1, 2], False))) < 1e-12


def _x(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5).to(dtype)


# gram returns the whole symmetric Gram at a size where the op computes the triangle by blocks.
def test_gram_is_the_full_matrix():
    x = _x(200, 7, 0)
    g = mpruner.gram(x)
    torch.testing.assert_close(g, R.gram(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(g, g.T, rtol=0, atol=1e-12)  # symmetric (a BLAS need not make it bitwise so)


# Mixed devices are refused naming both (the meta device stands in for a GPU).
def test_hsic_mixed_devices():
    with pytest.raises(ValueError) as info:
        mpruner.hsic(torch.ones(4, 4), torch.ones(4, 4, device="meta"))
    assert str(info.value) == "k is on cpu but l is on meta; move both to one device"


# A single layer works (its device and n are not read from a second layer).
def test_cka_matrix_of_one_layer():
    assert mpruner.cka_matrix([_x(6, 3, 1)]).tolist() == [[pytest.approx(1.0, abs=1e-12)]]


# The degeneracy threshold is (DEGENERATE_FACTOR eps^2 s)^2, eps of the Grams' dtype, s the mean
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


# An all-zero layer (self-HSIC 0, threshold 0: the test is <=, not <) is degenerate: NaN with
# the warning, not a silent 0/0. The warning lists the layers, comma-separated, word for word.
def test_zero_layers_are_degenerate_and_named():
    xs = [torch.zeros(6, 2, dtype=torch.float64), _x(6, 3, 4), torch.zeros(6, 1, dtype=torch.float64)]
    with pytest.warns(RuntimeWarning) as record:
        c = mpruner.cka_matrix(xs)
    assert torch.isnan(c[0]).all() and torch.isnan(c[:, 2]).all() and c[1, 1] == pytest.approx(1.0)
    assert str(record[0].message) == ("features[0], features[2]: zero HSIC with itself (the layer is constant on "
                                      "these samples), so its CKA is undefined; its row and column are NaN")


# The degenerate-layer warning points at the user's line (its stacklevel), from each public
# entry point.
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


# sigma reaches the RBF Grams through cka_matrix and cka.
def test_sigma_reaches_the_rbf_kernel():
    a, b = _x(9, 3, 6), _x(9, 4, 7)
    want = R.cka(a, b, "rbf", False, 0.3)
    assert abs(float(want) - float(R.cka(a, b, "rbf", False, 0.5))) > 1e-3
    assert float(mpruner.cka_matrix([a, b], "rbf", sigma=0.3)[0, 1]) == pytest.approx(float(want), abs=1e-10)
    assert float(mpruner.cka(a, b, "rbf", sigma=0.3)) == pytest.approx(float(want), abs=1e-10)


# cka_matrix's and cka's input errors name the argument as the user wrote it, word for word.
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


# NaN in a layer is a NonFiniteError naming it (cka's second tensor as "y").
@pytest.mark.parametrize("which", ["cka_matrix", "cka"])
def test_nonfinite_layer_is_named(which):
    x, bad = _x(5, 2, 0), _x(5, 2, 1)
    bad[2, 1] = float("nan")
    with pytest.raises(C.NonFiniteError) as info:
        mpruner.cka_matrix([x, bad]) if which == "cka_matrix" else mpruner.cka(x, bad)
    name = "features[1]" if which == "cka_matrix" else "y"
    assert info.value.layers == [name]
    assert str(info.value).startswith(f"NaN or Inf in the activations of {name}; fix the model/inputs")


def _published_cka(feats, threshold):
    """CKA with the published gram_rbf and explicit centering (float64 NumPy)."""
    gs = [NP.gram_rbf(np.asarray(f, dtype=np.float64).reshape(len(f), -1), threshold) for f in feats]
    h = np.array([[NP.hsic(a, b) for b in gs] for a in gs])
    d = np.diag(h)
    return h / np.sqrt(np.outer(d, d))


@pytest.mark.parametrize("n", [5, 6, 49, 50])  # odd and even n (n^2 odd and even)
def test_gram_matches_published_gram_rbf(device, gen, n):
    x = torch.randn(n, 7, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, 7, dtype=torch.float64) + 2
    for sigma in (0.3, 0.5, 1.0):
        want = NP.gram_rbf(x.numpy(), sigma)
        np.testing.assert_allclose(mpruner.gram(x.to(device), "rbf", sigma).cpu().numpy(), want, atol=1e-12)
        np.testing.assert_allclose(R.gram(x, "rbf", sigma).numpy(), want, atol=1e-12)


def test_median_counts_the_diagonal_and_averages_the_middle_two(gen):
    # n = 4: 16 squared distances = 4 zeros + 6 distinct distances twice; middle two
    # are the 8th and 9th (1-based) values, i.e. the 2nd and 3rd smallest distances.
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    d2 = sorted([1.0, 9.0, 49.0, 4.0, 36.0, 16.0])
    want_med = (d2[1] + d2[2]) / 2  # 4 zeros, then 1,1,4,4,9,9,...: 8th=4, 9th=9
    assert want_med == np.median([[(a - b) ** 2 for b in (0, 1, 3, 7)] for a in (0, 1, 3, 7)])
    k = mpruner.gram(x, "rbf", 1.0)
    np.testing.assert_allclose(k[0, 1].item(), np.exp(-1.0 / (2 * want_med)), rtol=1e-14)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_and_accumulator_match_published(device, gen, unbiased):
    n = 50
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    feats = [z @ torch.randn(3, d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(n, d, generator=gen,
                                                                                             dtype=torch.float64)
             for d in (6, 9, 4)]
    if not unbiased:
        want = _published_cka([f.numpy() for f in feats], 0.5)
        got = mpruner.cka_matrix([f.to(device) for f in feats], kernel="rbf").cpu().numpy()
        np.testing.assert_allclose(got, want, atol=1e-10)
        np.testing.assert_allclose(R.cka_matrix(feats, "rbf").numpy(), want, atol=1e-10)
    acc = mpruner.CKAAccumulator(kernel="rbf", unbiased=unbiased)
    acc.update([f.to(device) for f in feats])
    np.testing.assert_allclose(acc.compute().cpu().numpy(), R.cka_matrix(feats, "rbf", unbiased).numpy(), atol=1e-10)


def test_float32_grams_use_the_same_median(gen):
    x = torch.randn(64, 33, generator=gen) + 5
    want = NP.gram_rbf(x.double().numpy(), 0.5)
    np.testing.assert_allclose(mpruner.gram(x, "rbf").numpy(), want, atol=2e-5)


def test_median_in_layer_chunks_matches_one_pass(gen):
    # n=1500 float64: about 72 MB of distances per layer, so the 256 MB budget takes
    # the four layers' medians in two chunks (3 + 1).
    xs = [torch.randn(1500, 3, generator=gen, dtype=torch.float64) * (l + 1) + l for l in range(4)]
    g = mpruner.engine.ops.ops.grams(xs, "rbf", 0.5, False)
    for l in range(4):
        np.testing.assert_allclose(g[l].numpy(), NP.gram_rbf(xs[l].numpy(), 0.5), atol=1e-12)

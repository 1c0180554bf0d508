"""Property tests of the CKA engine: generated inputs (tests/helpers/engine_strategies.py) against
the float64 NumPy oracle. Each result is within the stated tolerance, or NaN with a
warning for a constant layer, or a ValueError from the documented list; never a crash,
a silent NaN or a CKA outside [-1, 1].

The default (``ci``) profile is short and seeded; ``--hypothesis-profile long`` runs
thousands of cases per property (README "Reliability" has its counts).
"""
import importlib
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mpruner  # noqa: E402
from mpruner.engine import reference as R  # noqa: E402
TC = importlib.import_module("mpruner.engine.token_cka")  # the module: mpruner.engine.token_cka is also the function
from mpruner.engine.ops import ops  # noqa: E402

from tests.helpers import engine_strategies as S  # noqa: E402
from tests.helpers import np_reference as NP  # noqa: E402

STATS = {}  # property -> [cases, max error seen]; MPRUNER_PROPERTY_STATS=path.json writes it at the end


@pytest.fixture(scope="module", autouse=True)
def _write_stats():
    yield
    _dump()


def _record(name, err):
    c = STATS.setdefault(name, [0, 0.0])
    c[0] += 1
    c[1] = max(c[1], err)
    if sum(v[0] for v in STATS.values()) % 200 == 0:
        _dump()  # a long run killed at its time limit still leaves its counts


def _dump():
    path = os.environ.get("MPRUNER_PROPERTY_STATS")
    if path:
        with open(path, "w") as f:
            json.dump({"max_examples": settings().max_examples,
                       "properties": {k: {"cases": v[0], "max_error": v[1]} for k, v in sorted(STATS.items())}},
                      f, indent=1)


def _conditioning(f, kernel, unbiased):
    """HSIC_1(K, K) / HSIC_0(K, K) rescaled: near 0 when U-centring leaves (almost) nothing of
    the layer (few samples, one feature), where the unbiased CKA is ill-conditioned."""
    if not unbiased:
        return 1.0
    with np.errstate(all="ignore"):
        k = NP.gram(f, kernel)
        n = k.shape[0]
        h1 = NP.hsic(k, k, True)
        h0 = NP.hsic(k, k, False) * (n - 1) ** 2 / (n * (n - 3))
    return float(h1 / h0) if h0 > 0 else 0.0


def _rbf_bandwidth_zero(x):
    """The RBF bandwidth is the median of the n^2 squared distances: (almost) 0 when more than
    half the pairs of samples coincide (rounded half-precision inputs), where the published
    formula divides by zero and the engine's Gram is constant."""
    with np.errstate(all="ignore"):
        x = x - x.mean(0)
        g = x @ x.T
        d2 = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
        return np.median(d2) <= 1e-6 * max(d2.max(), np.finfo(np.float64).tiny)


def _degenerate(case, kernel="linear"):
    """Layers whose CKA may be NaN (with the warning): constant up to rounding, whose RBF
    bandwidth is 0, or whose unbiased self-HSIC is below 1e-3 of the biased one (then also
    allowed an error / r)."""
    return [i for i, (x, dt) in enumerate(zip(case.as_float64, case.dtypes))
            if S.degenerate(x, dt) or (kernel == "rbf" and _rbf_bandwidth_zero(x))
            or _conditioning(x, kernel, case.unbiased) <= 1e-3]


def _tol(case, kernel, feats=None):
    r = min(_conditioning(f, kernel, case.unbiased) for f in (feats or case.as_float64))
    return S.tolerance(case.dtypes, case.offset) / max(r, 1e-3)


def _call(fn):
    """Runs fn; returns (result, warnings) — RuntimeWarnings are the documented constant-layer notice."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _oracle_cka(feats, kernel, unbiased):
    """float64 NumPy CKA: the explicit HSIC formulas for a few layers; for many, each layer's
    centred Gram once (NP.center) and all pairs as one product (L^2 n^3 would take minutes)."""
    with np.errstate(all="ignore"):
        if len(feats) <= 6:
            return NP.cka_matrix(feats, kernel, unbiased)
        c = np.stack([NP.center(NP.gram(f, kernel), unbiased).ravel() for f in feats])
        h = c @ c.T
        d = np.diag(h)
        return h / np.sqrt(np.outer(d, d))


# Public functions on a list of layers -> (call, oracle); add a new engine function here.
FUNCTIONS = {
    "cka_matrix": (lambda c, k: mpruner.cka_matrix(c.layers, k, c.unbiased),
                   lambda c, k: _oracle_cka(c.as_float64, k, c.unbiased)),
    "accumulator minibatch": (lambda c, k: _acc(c, k, "minibatch"),
                              lambda c, k: _oracle_cka(c.as_float64, k, c.unbiased)),
    "accumulator exact": (lambda c, k: _acc(c, "linear", "exact"),
                          lambda c, k: _oracle_cka(c.as_float64, "linear", c.unbiased)),
}


def _acc(case, kernel, estimator):
    acc = mpruner.CKAAccumulator(kernel=kernel, unbiased=case.unbiased, estimator=estimator)
    acc.update(case.layers)
    return acc.compute()


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@given(case=S.cases())
def test_cka_functions_match_float64(name, kernel, case):
    call, oracle = FUNCTIONS[name]
    note(repr(case))
    expected = oracle(case, kernel)
    got, warned = _call(lambda: call(case, kernel))
    degenerate = _degenerate(case, kernel)
    nan_rows = [i for i in range(got.shape[0]) if torch.isnan(got[i, i]) or torch.isnan(got[i]).all()]
    if nan_rows:
        assert warned, f"NaN rows {nan_rows} without a warning for {case}"
        assert set(nan_rows) <= set(degenerate), f"NaN for a non-constant layer {nan_rows} ({degenerate}) {case}"
    tol = _tol(case, kernel)
    _record(f"{name} {kernel}", S.check_cka(got, expected, case, nan_rows, tol))


@given(case=S.cases(max_layers=2), kernel=st.sampled_from(["linear", "rbf"]))
def test_cka_of_two_tensors(case, kernel):
    assume(len(case.layers) == 2)
    x, y = case.layers
    expected = _oracle_cka(case.as_float64, kernel, case.unbiased)[0, 1]
    got, warned = _call(lambda: mpruner.cka(x, y, kernel, case.unbiased))
    if torch.isnan(got):
        assert warned and _degenerate(case, kernel), case
        return
    assert abs(float(got)) <= 1 + 1e-6
    err = abs(float(got) - expected)
    assert err <= _tol(case, kernel), (err, case)
    _record("cka", err)


@given(case=S.cases(max_layers=1, max_n=120), kernel=st.sampled_from(["linear", "rbf"]))
def test_gram_center_hsic_match_float64(case, kernel):
    x = case.layers[0]
    x64 = case.as_float64[0]
    assume(not _degenerate(case))
    k = mpruner.gram(x, kernel)
    want_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert k.dtype == want_dtype and k.shape == (x.shape[0], x.shape[0])
    kc = mpruner.center_gram(k, case.unbiased)
    ref = NP.center(NP.gram(x64, kernel), case.unbiased)
    scale = max(np.abs(ref).max(), 1e-300)
    tol = 1e-10 if want_dtype == torch.float64 else 1e-4 * (1 + case.offset / 1e2)
    err = np.abs(kc.double().numpy() - ref).max() / scale
    assert err <= tol, (err, case)
    h = mpruner.hsic(k, k, case.unbiased)
    want = NP.hsic(NP.gram(x64, kernel), NP.gram(x64, kernel), case.unbiased)
    assert h.dtype == torch.float64
    assert abs(float(h) - want) <= 10 * tol * max(abs(want), scale * scale * 1e-12), (float(h), want, case)
    _record("gram/center_gram/hsic", float(err))


@given(case=S.cases(max_layers=6, max_n=60, dtypes=(torch.float64, torch.float32)))
def test_op_hsic_matrix_matches_float64(case):
    grams = torch.stack([mpruner.gram(x.double()) for x in case.layers])
    got = ops.hsic_matrix(grams, case.unbiased)
    want = np.array([[NP.hsic(a.numpy(), b.numpy(), case.unbiased) for b in grams] for a in grams])
    scale = max(np.abs(want).max(), 1e-300)
    err = float(np.abs(got.numpy() - want).max() / scale)
    assert err <= 1e-9, (err, case)
    _record("op hsic_matrix", err)


@st.composite
def token_cases(draw):
    unbiased = draw(st.booleans())
    L, B = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    T = draw(st.integers(4 if unbiased else 2, 40))
    D = draw(st.integers(1, 24))
    dtype = draw(st.sampled_from(S.DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    offset = draw(st.floats(0, 1)) * S.MAX_OFFSET[dtype]
    base = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    hs = [(torch.tanh(base @ torch.randn(3, D, generator=g, dtype=torch.float64))
           + 0.5 * torch.randn(B, T, D, generator=g, dtype=torch.float64) + offset).to(dtype) for _ in range(L)]
    lengths = [draw(st.integers(4 if unbiased else 2, T)) for _ in range(B)]
    side = draw(st.sampled_from(["right", "left"]))
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1 if side == "right" else 0
        if side == "left":
            mask[b, T - n:] = 1
    return hs, mask, unbiased, dtype, offset


def _check_token(name, got, warned, tc):
    """Each sequence's (L, L) block against the float64 CKA of its real tokens."""
    hs, mask, unbiased, dtype, offset = tc
    for b in range(mask.shape[0]):
        m = mask[b].bool()
        feats = [h[b][m].double().numpy() for h in hs]
        want = _oracle_cka(feats, "linear", unbiased)
        case = S.Case([h[b][m] for h in hs], [dtype] * len(hs), ["token"] * len(hs), offset, unbiased)
        degenerate = _degenerate(case)
        nan_rows = [i for i in range(len(hs)) if torch.isnan(got[b, i]).all()]
        assert set(nan_rows) <= set(degenerate) and (warned or not nan_rows), (b, nan_rows, degenerate)
        _record(name, S.check_cka(got[b], want, case, nan_rows, _tol(case, "linear")))


@given(tc=token_cases())
def test_token_cka_matches_float64_per_sequence(tc):
    hs, mask, unbiased, dtype, offset = tc
    got, warned = _call(lambda: mpruner.token_cka(hs, mask, unbiased))
    _check_token("token_cka", got, warned, tc)


@given(tc=token_cases(), budget=st.sampled_from([1, 2**12, TC.DEFAULT_GRAM_BYTES]))
def test_token_op_path_matches_float64_per_sequence(tc, budget):
    """The GPU algorithm run on CPU: sequences grouped by length (budget 1 byte: one group
    each), padded per-group Grams, the token_hsic op; token_cka on CPU takes the fused kernel."""
    hs, mask, unbiased, dtype, offset = tc
    lengths, order = TC._lengths(mask, *mask.shape, torch.device("cpu"))
    got, warned = _call(lambda: TC._normalise(TC._token_hsic_grouped(hs, lengths, order, unbiased, "highest",
                                                                     budget)))
    _check_token("token op path", got, warned, tc)


@given(tc=token_cases(), gram_dtype=st.sampled_from([torch.float64, torch.float32]),
       pad=st.sampled_from([0.0, float("nan"), 1e30]))
def test_op_token_hsic_matches_float64_and_ignores_padding(tc, gram_dtype, pad):
    """ops.token_hsic on (L, B, T, T) Grams whose rows/columns past lengths[b] hold anything
    (zeros, NaN, huge): each sequence's HSICs equal float64 NumPy's on its n x n block."""
    hs, mask, unbiased, _, _ = tc
    L, (B, T) = len(hs), mask.shape
    lengths = mask.sum(1)
    grams = torch.full((L, B, T, T), pad, dtype=gram_dtype)
    blocks = []
    for b in range(B):
        n = int(lengths[b])
        ks = [NP.gram(h[b][mask[b].bool()].double().numpy()) for h in hs]
        for l, k in enumerate(ks):
            grams[l, b, :n, :n] = torch.from_numpy(k).to(gram_dtype)
        blocks.append([grams[l, b, :n, :n].double().numpy() for l in range(L)])
    got = ops.token_hsic(grams, lengths, unbiased)
    assert got.dtype == torch.float64 and got.shape == (B, L, L)
    for b, ks in enumerate(blocks):
        with np.errstate(all="ignore"):
            want = np.array([[NP.hsic(a, c, unbiased) for c in ks] for a in ks])
        scale = max(max(np.abs(k).max() for k in ks) ** 2, 1e-300)  # HSIC is a mean of Gram products
        err = float(np.abs(got[b].numpy() - want).max() / scale)
        assert err <= (1e-12 if gram_dtype == torch.float64 else 1e-6), (err, b, int(lengths[b]), pad)
        _record(f"op token_hsic {str(gram_dtype)[6:]}", err)


@given(case=S.cases(max_layers=6, max_n=60, dtypes=(torch.float64, torch.float32), mixed=False),
       transposed=st.booleans())
def test_center_gram_batched_matches_float64(case, transposed):
    """center_gram and hsic on a (B, n, n) batch (optionally a transposed, non-contiguous
    view: Grams are symmetric), and the torch reference's center_gram, per matrix."""
    assume(not _degenerate(case))
    ks = torch.stack([mpruner.gram(x) for x in case.layers])
    ks = ks.transpose(-1, -2) if transposed else ks
    kc = mpruner.center_gram(ks, case.unbiased)
    ref_torch = R.center_gram(ks.double(), case.unbiased)
    assert kc.shape == ks.shape and kc.dtype == ks.dtype
    h = mpruner.hsic(ks, ks.flip(0), case.unbiased)
    assert h.dtype == torch.float64 and h.shape == (ks.shape[0],)
    tol = 1e-10 if ks.dtype == torch.float64 else 1e-4 * (1 + case.offset / 1e2)
    worst = 0.0
    for i, k in enumerate(ks.double().numpy()):
        want = NP.center(k, case.unbiased)
        scale = max(np.abs(want).max(), 1e-300)
        err = np.abs(kc[i].double().numpy() - want).max() / scale
        assert err <= tol, (err, i, case)
        assert np.abs(ref_torch[i].numpy() - want).max() / scale <= 1e-10, (i, case)
        hw = NP.hsic(k, ks.double().numpy()[-1 - i], case.unbiased)
        # float32 Grams are summed in float32 (the long profile saw 1.4e-9 of |K| |L| at n = 3)
        htol = 1e-9 if ks.dtype == torch.float64 else 1e-5
        assert abs(float(h[i]) - hw) <= htol * max(np.abs(k).max() * np.abs(ks[-1 - i].double().numpy()).max(),
                                                   1e-300), (float(h[i]), hw, i, case)
        worst = max(worst, float(err))
    _record("center_gram batched", worst)


@given(case=S.cases(max_layers=8, max_n=40), where=st.tuples(st.integers(0, 7), st.integers(0, 10**6),
                                                            st.integers(0, 10**6)),
       value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
       fn=st.sampled_from(["cka_matrix", "accumulator", "exact"]))
def test_nan_or_inf_anywhere_is_a_clear_error(case, where, value, fn):
    layer = where[0] % len(case.layers)
    x = case.layers[layer].clone()  # clone: expanded inputs cannot be written in place
    flat = x.reshape(-1)
    flat[where[1] % flat.numel()] = value
    layers = list(case.layers)
    layers[layer] = flat.reshape(x.shape)
    # the accumulators with the case's estimator: their default (unbiased) would refuse the
    # biased cases' n = 2..3 as too few samples before looking at the values
    call = {"cka_matrix": lambda: mpruner.cka_matrix(layers),
            "accumulator": lambda: mpruner.CKAAccumulator(unbiased=case.unbiased).update(layers),
            "exact": lambda: mpruner.CKAAccumulator(estimator="exact", unbiased=case.unbiased).update(layers)}[fn]
    label = f"layer {layer}" if fn != "cka_matrix" and call is not None else f"features[{layer}]"
    with pytest.raises(ValueError, match="NaN or Inf in the activations of") as info:
        call()
    assert f"features[{layer}]" in str(info.value) or f"layer {layer}" in str(info.value), (str(info.value), label)
    _record("NaN/Inf placed", 0.0)


@given(n=st.integers(0, 3), unbiased=st.booleans(), L=st.integers(1, 4))
def test_too_few_samples_is_a_clear_error(n, unbiased, L):
    assume(n < (4 if unbiased else 2))
    layers = [torch.randn(n, 3) for _ in range(L)]
    with pytest.raises(ValueError, match=r"needs n >= |is empty"):
        mpruner.cka_matrix(layers, unbiased=unbiased)
    _record("too few samples", 0.0)


def test_stats_are_finite():
    assert all(math.isfinite(v[1]) for v in STATS.values())

"""The pure-PyTorch reference (mpruner/engine/reference.py) against the independent float64
NumPy oracle. The engine tests compare the C++ ops with the reference; these pin the
reference itself, so an error there cannot pass by a matching error elsewhere."""
import numpy as np
import pytest
import torch

from mpruner.engine import reference as R
from tests.helpers import np_reference as NP


def _feats(n, seed, widths=(3, 5, 1)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return [torch.tanh(base @ torch.randn(2, d, generator=g, dtype=torch.float64))
            + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0 for d in widths]


@pytest.mark.parametrize("n", [7, 8])  # odd and even sample counts: the RBF median of n^2 distances
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_matches_numpy(n, kernel, unbiased):
    xs = _feats(n, n)
    for x in xs:
        np.testing.assert_allclose(R.gram(x, kernel).numpy(), NP.gram(x.numpy(), kernel), rtol=0, atol=1e-12)
        k = NP.gram(x.numpy(), kernel)
        np.testing.assert_allclose(R.center_gram(R.gram(x, kernel), unbiased).numpy(), NP.center(k, unbiased),
                                   rtol=0, atol=1e-10)
    want = NP.cka_matrix([x.numpy() for x in xs], kernel, unbiased)
    np.testing.assert_allclose(R.cka_matrix(xs, kernel, unbiased).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(float(R.cka(xs[0], xs[1], kernel, unbiased)), want[0, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.cka_matrix(xs[:1], kernel, unbiased, other=xs[1:]).numpy(), want[:1, 1:],
                               rtol=0, atol=1e-12)
    h = np.array([[NP.hsic(NP.gram(a.numpy(), kernel), NP.gram(b.numpy(), kernel), unbiased) for b in xs] for a in xs])
    np.testing.assert_allclose(R.hsic_matrix(xs, kernel, unbiased).numpy(), h, rtol=1e-12, atol=0)
    # minibatch: per-batch HSICs summed, normalised at the end (two batches: the rows split)
    halves = [[x[:n // 2 + 2] for x in xs], [x[n // 2 - 2:] for x in xs]]
    tot = sum(np.array([[NP.hsic(NP.gram(a.numpy(), kernel), NP.gram(b.numpy(), kernel), unbiased) for b in hb]
                        for a in hb]) for hb in halves)
    d = np.diag(tot)
    np.testing.assert_allclose(R.minibatch_cka(halves, kernel, unbiased).numpy(), tot / np.sqrt(np.outer(d, d)),
                               rtol=0, atol=1e-12)


# reference.gram: sigma is the median's multiplier; a constant layer's RBF Gram is all ones;
# an unknown kernel is refused naming it.
def test_reference_gram_sigma_constant_and_kernel():
    x = _feats(6, 3)[0]
    np.testing.assert_allclose(R.gram(x, "rbf", 0.8).numpy(), NP.gram_rbf(x.numpy() - x.numpy().mean(0), 0.8),
                               rtol=0, atol=1e-12)
    assert torch.equal(R.gram(torch.ones(5, 2, dtype=torch.float64), "rbf"), torch.ones(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel must be 'linear' or 'rbf', got 'cosine'"):
        R.gram(x, "cosine")


# reference.token_cka / exact_linear_cka: each sequence's real tokens only (a left-padded mask).
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_token_and_exact_cka(unbiased):
    hs = [torch.stack([f, f.flip(0)]) for f in _feats(8, 5, widths=(4, 4, 4))]  # (B=2, T=8, D=4) each
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :2] = 0
    got = R.token_cka(hs, mask, unbiased)
    for b in range(2):
        want = NP.cka_matrix([h[b][mask[b].bool()].numpy() for h in hs], "linear", unbiased)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.token_cka(hs, None, unbiased)[1].numpy(),
                               NP.cka_matrix([h[1].numpy() for h in hs], "linear", unbiased), rtol=0, atol=1e-12)
    xs = [h[0] for h in hs]
    np.testing.assert_allclose(R.exact_linear_cka(xs, unbiased).numpy(),
                               NP.cka_matrix([x.numpy() for x in xs], "linear", unbiased), rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.exact_linear_cka(xs[:1], unbiased, other=xs[1:]).numpy(),
                               NP.cka_matrix([x.numpy() for x in xs], "linear", unbiased)[:1, 1:], rtol=0, atol=1e-12)


# reference.token_cosine: the zero-vector rule (both zero: 1; one zero: 0), the clamp, the
# mask and the last_token view, against a direct NumPy loop.
@pytest.mark.parametrize("view", ["tokens", "last_token"])
def test_reference_token_cosine(view):
    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(2, 5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    hs[0][0, 1] = 0
    hs[1][0, 1] = 0          # both zero at (0, 1): cosine 1 between layers 0 and 1
    hs[2][1, 2] = 0          # one zero at (1, 2): cosine 0 against it
    hs[2][0, 0] = hs[0][0, 0] * 3  # parallel: cosine 1 (clamped if it rounds above)
    hs[1][0, 0] = hs[0][0, 0] * -3  # antiparallel: rounds to -1 - 2e-16, clamped to -1
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    cos, ang = R.token_cosine(hs, mask, view)
    toks = [(b, t) for b in range(2) for t in range(5) if mask[b, t]]
    if view == "last_token":
        toks = [(0, 3), (1, 4)]
    want_c, want_a = np.zeros((3, 3)), np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for b, t in toks:
                u, v = hs[i][b, t].numpy(), hs[j][b, t].numpy()
                nu, nv = u @ u, v @ v
                c = (1.0 if nu == nv == 0 else 0.0) if nu == 0 or nv == 0 else \
                    np.clip(u @ v / np.sqrt(nu * nv), -1, 1)
                want_c[i, j] += c / len(toks)
                want_a[i, j] += np.arccos(c) / np.pi / len(toks)
    np.testing.assert_allclose(cos.numpy(), want_c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ang.numpy(), want_a, rtol=0, atol=1e-12)


# The reference's defaults: linear, biased (minibatch: unbiased), the tokens view; and sigma
# reaching both Grams of cka, cka_matrix and minibatch_cka.
def test_reference_defaults_and_sigma():
    xs = _feats(8, 11)
    x64 = [x.numpy() for x in xs]
    k = R.gram(xs[0])
    np.testing.assert_allclose(R.center_gram(k).numpy(), NP.center(k.numpy(), False), rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(R.cka(xs[0], xs[1])), NP.cka_matrix(x64[:2])[0, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.exact_linear_cka(xs).numpy(), NP.cka_matrix(x64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.minibatch_cka([xs]).numpy(), NP.cka_matrix(x64, "linear", True), rtol=0, atol=1e-12)
    hs = [x.reshape(2, 4, -1) for x in _feats(8, 12, widths=(3, 3))]
    assert all(torch.equal(a, b) for a, b in zip(R.token_cosine(hs), R.token_cosine(hs, torch.ones(2, 4), "tokens")))
    for a, b in [(xs[0], xs[1]), (xs[1], xs[0])]:  # sigma for x's Gram and for y's
        want = NP.cka_matrix([a.numpy(), b.numpy()], "rbf", False, sigma=0.8)[0, 1]
        np.testing.assert_allclose(float(R.cka(a, b, "rbf", False, 0.8)), want, rtol=0, atol=1e-12)
    want = NP.cka_matrix(x64, "rbf", True, sigma=0.8)
    np.testing.assert_allclose(R.cka_matrix(xs, "rbf", True, 0.8).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.minibatch_cka([xs], "rbf", True, 0.8).numpy(), want, rtol=0, atol=1e-12)


# reference.center_gram takes n from the last dimension: a (2, 3, n, n) batch of Grams is
# centred per matrix.
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_center_gram_4d_batch(unbiased):
    ks = torch.stack([R.gram(x) for x in _feats(6, 2, widths=(1, 2, 3, 4, 5, 6))]).reshape(2, 3, 6, 6)
    got = R.center_gram(ks, unbiased)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got[i, j].numpy(), NP.center(ks[i, j].numpy(), unbiased), rtol=0, atol=1e-10)


# reference.hsic and hsic_matrix default to linear and biased; hsic_matrix of a single layer
# works.
def test_reference_hsic_defaults_and_one_layer():
    xs = _feats(7, 4)
    k, l = R.gram(xs[0]), R.gram(xs[1])
    np.testing.assert_allclose(float(R.hsic(k, l)), NP.hsic(k.numpy(), l.numpy(), False), rtol=1e-12, atol=0)
    want = np.array([[NP.hsic(NP.gram(a.numpy()), NP.gram(b.numpy()), False) for b in xs] for a in xs])
    np.testing.assert_allclose(R.hsic_matrix(xs).numpy(), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(R.hsic_matrix(xs[:1]).numpy(), want[:1, :1], rtol=1e-12, atol=0)


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

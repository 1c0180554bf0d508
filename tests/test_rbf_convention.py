"""The RBF bandwidth follows the canonical CKA reference (Kornblith et al. 2019, gram_rbf):
the median of all n^2 squared distances, diagonal zeros included, np.median's even-count mean."""
import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R

from tests.helpers import np_reference as NP


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

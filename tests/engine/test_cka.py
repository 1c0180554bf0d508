"""The public CKA functions against float64 NumPy and the PyTorch reference."""
import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R

from tests.helpers import np_reference as NP
from tests.helpers.layer_data import structured_layers

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Absolute tolerance on CKA values (in [0, 1]) by input dtype, against float64 NumPy on
# the same (already rounded) inputs. Observed over layer_data.SEEDS with offset 100:
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

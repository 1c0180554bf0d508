"""CKAAccumulator: streaming sums, merge, state, exact estimator, cross matrices."""
import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R

from tests.helpers import np_reference as NP
from tests.helpers.layer_data import SEEDS, structured_layers


def _batches(feats, size):
    n = feats[0].shape[0]
    return [[f[i:i + size] for f in feats] for i in range(0, n, size)]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_minibatch_equals_sum_of_batch_hsic(device, seeded_gen, kernel, unbiased):
    feats = structured_layers(seeded_gen, n=60)
    acc = mpruner.CKAAccumulator(kernel=kernel, unbiased=unbiased)
    batches = _batches(feats, 15)
    for b in batches:
        acc.update([f.to(device) for f in b])
    assert acc.num_batches == 4 and acc.num_samples == 60
    expected_sums = sum(np.array([[NP.hsic(NP.gram(x.numpy(), kernel), NP.gram(y.numpy(), kernel), unbiased)
                                   for y in b] for x in b]) for b in batches)
    np.testing.assert_allclose(acc.hsic.cpu().numpy(), expected_sums, rtol=1e-9)
    d = np.diag(expected_sums)
    np.testing.assert_allclose(acc.compute().cpu().numpy(), expected_sums / np.sqrt(np.outer(d, d)), atol=1e-10, rtol=0)
    assert torch.allclose(acc.compute().cpu(), R.minibatch_cka(batches, kernel, unbiased), atol=1e-10, rtol=0)


def test_merge_equals_one_pass(device, gen):
    feats = [f.to(device) for f in structured_layers(gen, n=80)]
    whole, a, b = (mpruner.CKAAccumulator() for _ in range(3))
    for i, batch in enumerate(_batches(feats, 10)):
        whole.update(batch)
        (a if i % 3 else b).update(batch)
    a.merge(b)
    assert a.num_batches == whole.num_batches == 8 and a.num_samples == 80
    assert torch.allclose(a.compute(), whole.compute(), atol=1e-12, rtol=0)
    empty = mpruner.CKAAccumulator()
    empty.merge(whole)
    assert torch.allclose(empty.compute(), whole.compute())


def test_state_dict_roundtrip_and_reset(gen):
    feats = structured_layers(gen, n=40)
    acc = mpruner.CKAAccumulator()
    for b in _batches(feats, 10)[:2]:
        acc.update(b)
    fresh = mpruner.CKAAccumulator()
    fresh.load_state_dict(acc.state_dict())
    for b in _batches(feats, 10)[2:]:
        acc.update(b)
        fresh.update(b)
    assert torch.equal(acc.compute(), fresh.compute()) and fresh.num_samples == 40
    acc.reset()
    assert acc.num_batches == 0
    with pytest.raises(RuntimeError, match="no batch accumulated"):
        acc.compute()
    with pytest.raises(ValueError, match="different options|saved with"):
        mpruner.CKAAccumulator(unbiased=False).load_state_dict(fresh.state_dict())


@pytest.mark.parametrize("unbiased", [False, True])
def test_exact_estimator_equals_full_data_cka(device, seeded_gen, unbiased):
    feats = structured_layers(seeded_gen, n=70, dims=(6, 9, 4), offset=50.0)
    acc = mpruner.CKAAccumulator(estimator="exact", unbiased=unbiased)
    for b in _batches(feats, 16):  # uneven last batch of 6
        acc.update([f.to(device) for f in b])
    expected = NP.cka_matrix([f.numpy() for f in feats], "linear", unbiased)
    np.testing.assert_allclose(acc.compute().cpu().numpy(), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("unbiased", [False, True])
def test_exact_merge_across_different_shifts(seeded_gen, unbiased):
    feats = structured_layers(seeded_gen, n=60, dims=(5, 7), offset=10.0)
    a = mpruner.CKAAccumulator(estimator="exact", unbiased=unbiased)
    b = mpruner.CKAAccumulator(estimator="exact", unbiased=unbiased)
    for i, batch in enumerate(_batches(feats, 12)):
        (a if i < 2 else b).update(batch)
    a.merge(b)
    expected = NP.cka_matrix([f.numpy() for f in feats], "linear", unbiased)
    np.testing.assert_allclose(a.compute().numpy(), expected, atol=1e-9, rtol=0)
    np.testing.assert_allclose(a.hsic.numpy(),
                               [[NP.hsic(NP.gram(x.numpy()), NP.gram(y.numpy()), unbiased) for y in feats]
                                for x in feats], rtol=1e-9)


def test_exact_refuses_wide_layers():
    acc = mpruner.CKAAccumulator(estimator="exact", max_exact_bytes=2**20)
    with pytest.raises(ValueError, match=r"would need .* GiB.*widths \[512, 512\]"):
        acc.update([torch.randn(8, 512), torch.randn(8, 512)])
    with pytest.raises(ValueError, match="only kernel='linear'"):
        mpruner.CKAAccumulator(kernel="rbf", estimator="exact")


@pytest.mark.parametrize("estimator", ["minibatch", "exact"])
def test_cross_matrix_accumulation(gen, estimator):
    feats = structured_layers(gen, n=48, dims=(5, 6, 7, 8))
    acc = mpruner.CKAAccumulator(estimator=estimator, unbiased=False)
    for b in _batches(feats, 48 if estimator == "minibatch" else 12):
        acc.update(b[:3], other=b[3:])
    got = acc.compute()
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got.numpy(), NP.cka_matrix([f.numpy() for f in feats])[:3, 3:], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"holds \(L, M\)=\(3, 1\)"):
        acc.update(feats[:2], other=feats[2:])


def test_nan_policy(gen):
    feats = structured_layers(gen, n=40)
    bad = [f.clone() for f in feats[:4]]
    bad[2][3, 1] = float("nan")
    acc = mpruner.CKAAccumulator(layer_names=["l0", "l1", "l2", "l3"])
    acc.update([f[:20] for f in feats])
    with pytest.raises(ValueError, match=r"NaN or Inf in the activations of l2 \(batch 1\)"):
        acc.update(bad)
    skip = mpruner.CKAAccumulator(nan_policy="skip")
    skip.update([f[:20] for f in feats])
    skip.update(bad)
    skip.update([f[20:] for f in feats])
    assert skip.num_skipped == 1 and skip.num_batches == 2 and skip.num_samples == 40
    ref = mpruner.CKAAccumulator()
    for b in _batches(feats, 20):
        ref.update(b)
    assert torch.allclose(skip.compute(), ref.compute())


def test_constant_layer_gives_nan_and_warning(gen):
    feats = structured_layers(gen, n=30, dims=(6, 7))
    const = torch.full((30, 5), 3.3)
    for est in ("minibatch", "exact"):
        acc = mpruner.CKAAccumulator(estimator=est, layer_names=["a", "flat", "b"])
        acc.update([feats[0], const, feats[1]])
        with pytest.warns(RuntimeWarning, match="flat: zero HSIC with itself"):
            c = acc.compute()
        assert torch.isnan(c[1]).all() and torch.isnan(c[:, 1]).all()
        assert torch.isfinite(c[[0, 2]][:, [0, 2]]).all()
    with pytest.warns(RuntimeWarning, match=r"^x: zero HSIC"):  # named as the caller wrote it
        assert torch.isnan(mpruner.cka(torch.zeros(10, 3) + 1, feats[0][:10]))


def test_device_argument_moves_batches(gen):
    feats = structured_layers(gen, n=20, dims=(4, 5), dtype=torch.float32)
    acc = mpruner.CKAAccumulator(device="cpu")
    acc.update(feats)
    assert acc.hsic.device.type == "cpu" and acc.hsic.dtype == torch.float64


@pytest.mark.parametrize("context", ["threads=1", "inference_mode", "no_grad"])
def test_layer_parallel_grams_match_serial(gen, context):
    # On CPU with L >= threads each layer's Gram is one task on a worker thread; the
    # result must not depend on that or on the caller's grad/inference mode.
    feats = [f.float() for f in structured_layers(gen, n=96, dims=(40, 24, 56, 32, 48))]
    want = NP.cka_matrix([f.double().numpy() for f in feats], "linear", True)
    threads = torch.get_num_threads()
    try:
        if context == "threads=1":
            torch.set_num_threads(1)
        mode = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}.get(context, torch.enable_grad)
        with mode():
            acc = mpruner.CKAAccumulator()
            acc.update(feats)
            got = acc.compute()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6, rtol=0)


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


def _offset_errors(seed, offset):
    """Max |float32 CKA - float64 CKA of the same float32 inputs| of the engine (the
    accumulator, shifted by the previous batch's means; cka_matrix, by the first row) and of
    float32 Grams of features centered exactly in float64 (the best float32 can do)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [structured_layers(gen, n=64, dims=(16, 24, 8), dtype=torch.float32, offset=offset)
               for _ in range(4)]
    acc, ref, best = mpruner.CKAAccumulator(), mpruner.CKAAccumulator(), mpruner.CKAAccumulator()
    for b in batches:
        acc.update(b)
        ref.update([x.double() for x in b])
        best.update([(x.double() - x.double().mean(0)).float() for x in b])
    exact = mpruner.cka_matrix([x.double() for x in batches[0]])
    one = float((mpruner.cka_matrix(batches[0]) - exact).abs().max())
    one_best = float((mpruner.cka_matrix([(x.double() - x.double().mean(0)).float() for x in batches[0]])
                      - exact).abs().max())
    return (float((acc.compute() - ref.compute()).abs().max()), float((best.compute() - ref.compute()).abs().max()),
            one, one_best)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_float32_error_is_no_worse_under_large_offsets(seed, offset):
    """Centering in one pass: the features are shifted by a vector known before the pass,
    so an offset of 100 or 1e4 on every feature costs float32 no more than exact centering."""
    acc, acc_best, one, one_best = _offset_errors(seed, offset)
    assert acc < 1e-7 and one < 1e-7
    assert acc <= 2 * acc_best + 1e-9 and one <= 2 * one_best + 1e-9, (acc, acc_best, one, one_best)


def test_offsets_would_ruin_float32_grams_without_the_shift(gen):
    # The check above can fail: the same Grams with a zero shift lose several digits at 1e4.
    xs = structured_layers(gen, n=64, dims=(16, 24, 8), dtype=torch.float32, offset=1e4)
    zero = torch.zeros(sum(x.shape[1] for x in xs), dtype=torch.float64)
    grams, _ = mpruner.engine.ops.ops.grams_shifted(xs, zero, "linear", 0.5, False, "highest", 0)
    wrong = R.cka_from_hsic(mpruner.engine.ops.ops.hsic_matrix(grams, False))
    err = float((wrong - mpruner.cka_matrix([x.double() for x in xs])).abs().max())
    assert err > 1e-4

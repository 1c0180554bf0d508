"""Per-sequence (token) CKA against one-sequence-at-a-time references."""
import warnings

import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R
import importlib

TC = importlib.import_module("mpruner.engine.token_cka")

from tests.helpers import np_reference as NP


def _hidden(gen, L=4, B=6, T=11, D=8, dtype=torch.float64):
    base = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    hs = [base + 0.5 * (l + 1) * torch.randn(B, T, D, generator=gen, dtype=torch.float64) + 2 for l in range(L)]
    return [h.to(dtype) for h in hs]


def _np_token(hs, mask, unbiased):
    out = []
    for b in range(hs[0].shape[0]):
        m = mask[b].bool().numpy()
        out.append(NP.cka_matrix([h[b].double().numpy()[m] for h in hs], "linear", unbiased))
    return np.stack(out)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("padding", ["none", "right", "left", "holes"])
def test_token_cka_matches_numpy(device, seeded_gen, unbiased, padding):
    hs = _hidden(seeded_gen)
    B, T = hs[0].shape[:2]
    mask = torch.ones(B, T, dtype=torch.long)
    if padding == "right":
        for b in range(B):
            mask[b, 5 + b:] = 0
    elif padding == "left":
        for b in range(B):
            mask[b, : b + 1] = 0
    elif padding == "holes":
        mask[:, 1::3] = 0
    poisoned = [h.clone() for h in hs]
    for h in poisoned:  # padded positions must never be read into the result
        h[~mask.bool()] = float("nan")
    got = mpruner.token_cka([h.to(device) for h in poisoned], mask.to(device), unbiased)
    assert got.shape == (B, 4, 4) and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), _np_token(hs, mask, unbiased), atol=1e-10, rtol=0)


def test_token_cka_stacked_tensor_float32_and_reference(gen):
    hs = _hidden(gen, dtype=torch.float32)
    mask = torch.ones(6, 11)
    mask[2, 7:] = 0
    got = mpruner.token_cka(torch.stack(hs), mask)
    np.testing.assert_allclose(got.numpy(), R.token_cka([h.double() for h in hs], mask).numpy(), atol=2e-5, rtol=0)


def _paths(hs, mask, unbiased, **kw):
    """token_cka's two implementations on the same input: the fused CPU kernel and the
    grouped batched-GEMM path that GPUs take (run here on CPU so CPU CI covers it)."""
    layers = TC._layer_list(hs)
    lengths, order = TC._lengths(mask, *layers[0].shape[:2], layers[0].device)
    fused = TC._normalise(TC._token_hsic_fused(layers, lengths, order, unbiased,
                                               kw.get("max_gram_bytes", TC.DEFAULT_GRAM_BYTES)))
    grouped = TC._normalise(TC._token_hsic_grouped(layers, lengths, order, unbiased, "highest",
                                                   kw.get("max_gram_bytes", TC.DEFAULT_GRAM_BYTES)))
    return fused, grouped


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("padding", ["right", "left", "holes"])
def test_fused_and_grouped_paths_match_numpy_at_real_lengths(gen, unbiased, padding):
    # Lengths 5..70 cross the fused kernel's split-Gram threshold (48 tokens).
    L, B, T = 5, 9, 70
    hs = _hidden(gen, L=L, B=B, T=T, D=24)
    lens = torch.randint(5, T + 1, (B,), generator=gen)
    lens[0] = T
    mask = (torch.arange(T)[None, :] < lens[:, None]).long()
    if padding == "left":
        mask = mask.flip(1)
    elif padding == "holes":
        mask[:, 3::5] = 0
    poisoned = [h.clone() for h in hs]
    for h in poisoned:
        h[~mask.bool()] = float("nan")
    want = _np_token(hs, mask, unbiased)
    for got in _paths(poisoned, mask, unbiased, max_gram_bytes=L * 8 * 70 * 70 * 2):  # ~2 sequences per group
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("unbiased", [False, True])
def test_fused_long_sequences_in_row_blocks(gen, unbiased):
    # A memory bound far below L * n^2 makes the kernel take 16 Gram rows at a time
    # (blocks against the remaining columns); the result must not change.
    L, B, T = 4, 3, 90
    hs = _hidden(gen, L=L, B=B, T=T, D=20)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 61:] = 0
    mask[2, :7] = 0
    want = _np_token(hs, mask, unbiased)
    layers = TC._layer_list(hs)
    lengths, order = TC._lengths(mask, B, T, torch.device("cpu"))
    for budget in (1, 8 * L * 40 * T * 2, TC.DEFAULT_GRAM_BYTES):  # 16 rows, 40 rows, one block
        got = TC._normalise(TC._token_hsic_fused(layers, lengths, order, unbiased, budget))
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_low_precision_inputs(gen, dtype):
    hs = _hidden(gen, L=4, B=5, T=60, D=32, dtype=dtype)
    mask = torch.ones(5, 60)
    mask[1, 50:] = 0
    want = _np_token([h.double() for h in hs], mask, False)  # the same rounded inputs, in float64
    fused, grouped = _paths(hs, mask, False)
    np.testing.assert_allclose(fused.numpy(), want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(grouped.numpy(), want, atol=2e-5, rtol=0)


def test_fused_strided_inputs(gen):
    # Views with batch/token strides are read in place; a strided feature dim is copied.
    big = _hidden(gen, L=3, B=8, T=40, D=16)
    hs = [big[0][::2, ::2], big[1].transpose(0, 1).contiguous().transpose(0, 1)[::2, ::2],
          big[2][::2, ::2].transpose(1, 2).contiguous().transpose(1, 2)]
    hs[2] = torch.empty(4, 16, 20, dtype=torch.float64).copy_(hs[2].transpose(1, 2)).transpose(1, 2)
    assert hs[2].stride(2) != 1
    mask = torch.ones(4, 20)
    mask[3, :4] = 0
    want = _np_token([h.contiguous() for h in hs], mask, True)
    np.testing.assert_allclose(mpruner.token_cka(hs, mask, unbiased=True).numpy(), want, atol=1e-10, rtol=0)


def test_fused_many_sequences_match_one_at_a_time(gen):
    hs = _hidden(gen, L=3, B=37, T=30, D=12)
    mask = torch.ones(37, 30)
    for b in range(37):
        mask[b, 4 + (b * 7) % 26:] = 0
    whole = mpruner.token_cka(hs, mask)
    one_by_one = torch.cat([mpruner.token_cka([h[b:b + 1] for h in hs], mask[b:b + 1]) for b in range(37)])
    torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-12)  # tasks share nothing


def test_token_cka_groups_match_single_group(gen):
    hs = _hidden(gen, B=20, T=16)
    mask = torch.ones(20, 16)
    for b in range(20):
        mask[b, 4 + (b * 7) % 12:] = 0
    one = _paths(hs, mask, False)[1]
    many = _paths(hs, mask, False, max_gram_bytes=4 * 16 * 16 * 8 * 3)[1]  # ~3 sequences per group
    assert torch.allclose(one, many, atol=1e-12, rtol=0)


def test_token_cka_mixed_widths(gen):
    hs = _hidden(gen, L=3)
    hs[1] = torch.cat([hs[1], hs[1][..., :3] * 2], -1)
    mask = torch.ones(6, 11)
    mask[0, 6:] = 0
    want = _np_token(hs, mask, True)
    for got in _paths(hs, mask, True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-10, rtol=0)


def test_token_cka_errors(gen):
    hs = _hidden(gen)
    mask = torch.ones(6, 11)
    mask[3, 3:] = 0
    with pytest.raises(ValueError, match=r"sequences \[3\].*fewer than 4 tokens"):
        mpruner.token_cka(hs, mask, unbiased=True)
    with pytest.raises(ValueError, match="attention_mask must be"):
        mpruner.token_cka(hs, torch.ones(6, 10))
    with pytest.raises(ValueError, match=r"hidden_states\[1\] has \(B, T\)"):
        mpruner.token_cka([hs[0], hs[1][:, :5]], None)
    bad = [h.clone() for h in hs]
    bad[2][0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf.*layers \\[2\\]"):
        mpruner.token_cka(bad, None)


def test_mixed_widths_float32_with_a_large_offset(gen):
    # Each layer's tokens must be centered by that layer's own mean: with per-feature
    # offsets of ~1000 in float32, Grams of badly centered features lose CKA's digits.
    hs = _hidden(gen, L=4, B=3, T=50, D=8, dtype=torch.float64)
    hs[1] = torch.cat([hs[1], hs[1][..., :3] * 2], -1)       # widths 8, 11, 8, 8
    hs = [(h + 1000.0 * torch.randn(h.shape[-1], generator=gen, dtype=torch.float64)).float() for h in hs]
    mask = torch.ones(3, 50)
    mask[2, 30:] = 0
    want = _np_token([h.double() for h in hs], mask, False)
    for got in _paths(hs, mask, False):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


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

"""Per-sequence (token) CKA against one-sequence-at-a-time references."""
import numpy as np
import pytest
import torch

import mpruner
from mpruner import reference as R

import np_reference as NP


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
def test_token_cka_matches_numpy(device, gen, unbiased, padding):
    hs = _hidden(gen)
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
    np.testing.assert_allclose(got.cpu().numpy(), _np_token(hs, mask, unbiased), atol=1e-10)


def test_token_cka_stacked_tensor_float32_and_reference(gen):
    hs = _hidden(gen, dtype=torch.float32)
    mask = torch.ones(6, 11)
    mask[2, 7:] = 0
    got = mpruner.token_cka(torch.stack(hs), mask)
    np.testing.assert_allclose(got.numpy(), R.token_cka([h.double() for h in hs], mask).numpy(), atol=2e-5)


def test_token_cka_groups_match_single_group(gen):
    hs = _hidden(gen, B=20, T=16)
    mask = torch.ones(20, 16)
    for b in range(20):
        mask[b, 4 + (b * 7) % 12:] = 0
    one = mpruner.token_cka(hs, mask)
    many = mpruner.token_cka(hs, mask, max_gram_bytes=4 * 16 * 16 * 8 * 3)  # ~3 sequences per group
    assert torch.allclose(one, many, atol=1e-12)


def test_token_cka_mixed_widths(gen):
    hs = _hidden(gen, L=3)
    hs[1] = torch.cat([hs[1], hs[1][..., :3] * 2], -1)
    mask = torch.ones(6, 11)
    mask[0, 6:] = 0
    got = mpruner.token_cka(hs, mask, unbiased=True)
    np.testing.assert_allclose(got.numpy(), _np_token(hs, mask, True), atol=1e-10)


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

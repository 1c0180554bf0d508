"""torch.ops.mpruner._cosine_sums and mpruner.engine.token_cosine against the float64 reference."""
import pytest
import torch

import mpruner
from mpruner.engine import reference, similarity

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and mpruner.cuda_built() else [])


def _hidden(L=5, B=3, T=7, D=6, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    # Layers that drift away from each other, with a common offset: cosines spread over (-1, 1).
    return [(base + 0.7 * i * torch.randn(B, T, D, generator=g, dtype=torch.float64) + 0.3).to(dtype).to(device)
            for i in range(L)]


def _mask(kind, B=3, T=7):
    m = torch.ones(B, T, dtype=torch.long)
    lengths = [T, 4, 2][:B]
    for b, n in enumerate(lengths):
        m[b] = 0
        if kind == "right":
            m[b, :n] = 1
        else:
            m[b, T - n:] = 1
    return m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", ["tokens", "last_token"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_matches_reference(device, view, padding):
    hs = _hidden(device=device)
    mask = None if padding is None else _mask(padding)
    if mask is not None:  # padding holds garbage: it must not enter the means
        hs = [torch.where(mask.bool().to(device)[:, :, None], h, torch.full_like(h, 1e6)) for h in hs]
    cos, ang = mpruner.engine.token_cosine(hs, None if mask is None else mask.to(device), view=view)
    ref_cos, ref_ang = reference.token_cosine([h.cpu() for h in hs], mask, view=view)
    torch.testing.assert_close(cos.cpu(), ref_cos, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ang.cpu(), ref_ang, rtol=1e-12, atol=1e-12)
    assert cos.dtype == torch.float64 and torch.allclose(cos, cos.T)
    assert torch.allclose(torch.diagonal(cos), torch.ones(5, dtype=torch.float64, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_bfloat16_inputs(device):
    hs = _hidden(L=4, D=33, seed=1)
    ref_cos, ref_ang = reference.token_cosine(hs)
    cos, ang = mpruner.engine.token_cosine([h.float().to(device) for h in hs])
    torch.testing.assert_close(cos.cpu(), ref_cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ang.cpu(), ref_ang, rtol=1e-5, atol=1e-6)
    cos16, _ = mpruner.engine.token_cosine([h.bfloat16().to(device) for h in hs])
    torch.testing.assert_close(cos16.cpu(), ref_cos, rtol=0, atol=3e-2)


def test_zero_vector_rule_gives_no_nan():
    hs = _hidden(L=3, B=1, T=4, D=5)
    hs[1] = hs[1].clone()
    hs[1][0, 0] = 0  # layer 1 is zero at token 0
    hs[2] = hs[2].clone()
    hs[2][0, 0] = 0  # ... and so is layer 2
    cos, ang = mpruner.engine.token_cosine(hs)
    ref_cos, ref_ang = reference.token_cosine(hs)
    assert torch.isfinite(cos).all() and torch.isfinite(ang).all()
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(ang, ref_ang)
    # token 0: layers 1 and 2 both zero -> cosine 1; layer 0 vs a zero vector -> cosine 0, angular 1/2
    one, _ = mpruner.engine.token_cosine([h[:, :1] for h in hs])
    assert one[1, 2] == 1 and one[0, 1] == 0
    _, a = mpruner.engine.token_cosine([h[:, :1] for h in hs])
    assert a[0, 2] == 0.5


def test_strided_inputs_and_one_kernel_call_for_all_pairs():
    hs = [h.transpose(0, 1).contiguous().transpose(0, 1) for h in _hidden(L=6)]  # batch/token strides swapped
    assert not hs[0].is_contiguous()
    rows = similarity.token_rows(None, 3, 7)
    cos, ang = torch.ops.mpruner._cosine_sums(hs, rows)
    ref_cos, _ = reference.token_cosine(hs)
    torch.testing.assert_close(cos / rows.numel(), ref_cos)
    assert cos.shape == (6, 6)


def test_opcheck():
    hs = _hidden(L=3, dtype=torch.float32)
    rows = similarity.token_rows(_mask("left"), 3, 7)
    torch.library.opcheck(torch.ops.mpruner._cosine_sums.default, (hs, rows))


@pytest.mark.parametrize("bad, match", [
    (lambda hs, r: ([hs[0], hs[1][:, :, :3]], r), "one width"),
    (lambda hs, r: (hs, r + 100), "outside"),
    (lambda hs, r: ([h.long() for h in hs], r), "float32 or float64"),
])
def test_kernel_errors(bad, match):
    hs = _hidden(L=2, dtype=torch.float32)
    rows = similarity.token_rows(None, 3, 7)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mpruner._cosine_sums(*bad(hs, rows))


def test_wrapper_errors():
    with pytest.raises(ValueError, match="one width"):
        mpruner.engine.token_cosine([torch.randn(2, 3, 4), torch.randn(2, 3, 5)])
    with pytest.raises(ValueError, match="view"):
        mpruner.engine.token_cosine([torch.randn(2, 3, 4)], view="mean")
    with pytest.raises(ValueError, match="no real token"):
        mpruner.engine.token_cosine([torch.randn(2, 3, 4)], torch.zeros(2, 3))


@pytest.mark.parametrize("K, D", [(1, 5), (3, 70), (40, 300)])  # a warp per pair ... a thread per pair;
def test_cosine_sums_match_float64_and_repeat_bitwise(device, K, D):  # several feature slices per token
    """Many tokens per thread block (N > 1024 blocks' worth), the sums added in a fixed order: the
    same inputs give bitwise the same sums, equal to a float64 computation."""
    g = torch.Generator().manual_seed(K * 1000 + D)
    base = torch.randn(3, 700, D, generator=g)
    hs = [(base + 0.5 * k * torch.randn(3, 700, D, generator=g)).to(device) for k in range(K)]
    rows = torch.randperm(3 * 700, generator=g)[:1900].to(device)
    cos, ang = torch.ops.mpruner._cosine_sums(hs, rows)
    again = torch.ops.mpruner._cosine_sums(hs, rows)
    assert torch.equal(cos, again[0]) and torch.equal(ang, again[1])
    flat = torch.stack([h.reshape(-1, D)[rows.long()].double().cpu() for h in hs])  # (K, N, D)
    unit = flat / flat.norm(dim=-1, keepdim=True)
    want = torch.einsum("and,bnd->abn", unit, unit).clamp(-1, 1)
    torch.testing.assert_close(cos.cpu(), want.sum(-1), rtol=1e-9, atol=1e-9)
    # arccos is ill-conditioned near cos = 1 (a layer with itself): a looser bound on the angles
    torch.testing.assert_close(ang.cpu(), (torch.arccos(want) / torch.pi).sum(-1), rtol=1e-6, atol=1e-4)

"""The raw torch.ops.mpruner operators: opcheck, torch.compile, kernel-level checks."""
import numpy as np
import pytest
import torch

import mpruner
from mpruner.engine.ops import ops

from tests.helpers import np_reference as NP
from tests.helpers.layer_data import structured_layers


def _grams(gen, L=3, n=21, dtype=torch.float64):
    return torch.stack([torch.from_numpy(NP.gram(f.numpy())).to(dtype)
                        for f in structured_layers(gen, n=n, dims=(5, 6, 7, 8)[:L])])


def _poison_cuda_allocator(device):
    # Freed blocks are reused by the caching allocator: outputs a kernel forgets
    # to write then read as NaN instead of plausible zeros.
    if device.type == "cuda":
        torch.full((64 * 2**20,), float("nan"), device=device)
        torch.cuda.synchronize()


OPCHECK_CASES = {
    "grams": lambda g: ([torch.randn(9, 4, generator=g), torch.randn(9, 6, generator=g)], "linear", 0.5, False),
    "grams_rbf": lambda g: ([torch.randn(9, 4, generator=g), torch.randn(9, 6, generator=g)], "rbf", 0.7, False),
    "center_gram": lambda g: (torch.randn(2, 7, 7, generator=g), True),
    "hsic_matrix": lambda g: (torch.randn(3, 8, 8, generator=g), True),
    "token_hsic": lambda g: (torch.randn(2, 3, 9, 9, generator=g), torch.tensor([9, 6, 5]), False),
    "_token_hsic_fused": lambda g: ([torch.randn(3, 9, 5, generator=g), torch.randn(3, 9, 7, generator=g)],
                                    torch.stack([torch.randperm(9, generator=g) for _ in range(3)]),
                                    torch.tensor([9, 6, 5]), True, 2**20),
    "_hsic_partials": lambda g: (torch.randn(2, 3, 9, 9, generator=g), torch.tensor([9, 6, 5]), True),
    "_center_apply": lambda g: (torch.randn(2, 6, 6, generator=g), torch.randn(2, 6, generator=g, dtype=torch.float64),
                                torch.randn(2, generator=g, dtype=torch.float64), False),
    "_hsic_partials_all_rows": lambda g: (torch.randn(2, 3, 9, 9, generator=g), None, False),
    "_rbf_apply": lambda g: (torch.randn(2, 6, 6, generator=g), torch.rand(2, 6, generator=g, dtype=torch.float64),
                             torch.rand(2, generator=g, dtype=torch.float64)),
    "_rbf_bandwidths": lambda g: (torch.randn(3, 7, 7, generator=g).abs(), 0.5, "sort"),
    "_hsic_finish": lambda g: (torch.randn(3, 3, generator=g, dtype=torch.float64),
                               torch.randn(3, 9, generator=g, dtype=torch.float64), 8, True,
                               torch.rand(3, generator=g, dtype=torch.float64), 1e-12,
                               torch.tensor(4), False, torch.zeros(3, 3, dtype=torch.float64),
                               torch.zeros(3, dtype=torch.float64), torch.tensor([-1, -1, -1, 0, 0])),
    "grams_shifted": lambda g: ([torch.randn(9, 4, generator=g) + 5, torch.randn(9, 6, generator=g)],
                                torch.randn(10, generator=g, dtype=torch.float64), "linear", 0.5, False, "highest", 0),
    "_shift_features": lambda g: ([torch.randn(9, 4, generator=g) + 5, torch.randn(9, 4, generator=g)],
                                  torch.randn(8, generator=g), torch.float32, "hilo"),
    "_shift_features__first_row": lambda g: ([torch.randn(9, 4, generator=g) + 5], None, torch.float64, "none"),
    "_layer_grams": lambda g: ([torch.randn(9, 4, generator=g) + 5, torch.randn(9, 6, generator=g),
                                torch.randn(9, 3, generator=g)], torch.randn(13, generator=g), "round", 0),
}
# (Full products: with block rows the strict lower triangle is left unset, which opcheck
# would compare; test_layer_grams_upper_triangle_and_column_sums checks the triangle.)
CPU_ONLY_OPS = ("_token_hsic_fused", "_layer_grams")


@pytest.mark.parametrize("case", sorted(OPCHECK_CASES))
def test_opcheck(device, gen, case):
    if case in CPU_ONLY_OPS and device.type != "cpu":
        pytest.skip(f"{case} is a CPU kernel; the GPU takes the batched path")
    args = OPCHECK_CASES[case](gen)
    args = tuple([a.to(device) for a in x] if isinstance(x, list) else x.to(device) if isinstance(x, torch.Tensor)
                 else x for x in args)
    name = {"grams_rbf": "grams", "_hsic_partials_all_rows": "_hsic_partials"}.get(case, case.split("__")[0])
    op = getattr(ops, name).default
    torch.library.opcheck(op, args)


def test_compile_fullgraph_cka_matrix(gen):
    feats = [f.float() for f in structured_layers(gen, n=32)]
    fn = torch.compile(lambda fs: mpruner.cka_matrix(fs, unbiased=True), fullgraph=True)
    torch.testing.assert_close(fn(feats), mpruner.cka_matrix(feats, unbiased=True))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hsic_matrix_reads_only_upper_triangle(device, seeded_gen, unbiased, dtype, hsic_kernel):
    grams = _grams(seeded_gen, dtype=dtype)
    expected = np.array([[NP.hsic(a.double().numpy(), b.double().numpy(), unbiased) for b in grams] for a in grams])
    poisoned = grams.clone()
    low = torch.tril(torch.ones(21, 21, dtype=torch.bool), -1)
    poisoned[:, low] = float("nan")
    _poison_cuda_allocator(device)
    got = ops.hsic_matrix(poisoned.to(device), unbiased)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-11)


@pytest.mark.parametrize("unbiased", [False, True])
def test_token_hsic_ignores_padding(device, seeded_gen, unbiased, hsic_kernel):
    L, B, T = 3, 4, 23
    lengths = torch.tensor([23, 9, 17, 4])
    grams = torch.full((L, B, T, T), float("nan"), dtype=torch.float64)
    expected = np.zeros((B, L, L))
    for b, n in enumerate(lengths.tolist()):
        g = _grams(seeded_gen, L=L, n=n)
        grams[:, b, :n, :n] = g
        expected[b] = [[NP.hsic(x.numpy(), y.numpy(), unbiased) for y in g] for x in g]
    _poison_cuda_allocator(device)
    got = ops.token_hsic(grams.to(device), lengths.to(device), unbiased)
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_hsic_partials_many_layers_and_rows(device, gen, hsic_kernel):
    # Enough layers for several pair groups / register slots and rows for several tiles.
    L, n = 70, 67
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    grams = torch.stack([(x * (1 + l % 7)) @ (x * (1 + l % 5)).T for l in range(L)])
    pairs, rows = ops._hsic_partials(grams[:, None].to(device), torch.tensor([n], device=device), True)
    g = grams.clone()
    g.diagonal(dim1=1, dim2=2).zero_()
    torch.testing.assert_close(pairs[0].cpu(), torch.einsum("aij,bij->ab", g, g), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(rows[0].cpu(), g.sum(-1), rtol=1e-12, atol=1e-9)


def test_triangular_grams_match_full(device, gen):
    xs = [torch.randn(300, d, generator=gen).to(device) + 1 for d in (7, 33)]
    full = ops.grams(xs, "linear", 0.5, False)
    tri = ops.grams(xs, "linear", 0.5, True)
    upper = torch.triu(torch.ones(300, 300, dtype=torch.bool, device=device))
    assert torch.equal(full[:, upper], tri[:, upper])
    torch.testing.assert_close(full, full.transpose(1, 2))


def _shifted_gram(x, s):
    v = x.double() - s.double()
    return v @ v.T


@pytest.mark.parametrize("block", [-1, 0, 16, 40])
@pytest.mark.parametrize("L", [1, 3, 5])
def test_layer_grams_upper_triangle_and_column_sums(gen, block, L):
    # 2 threads: L = 3 and 5 leave a last layer split by rows across both threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        xs = [torch.randn(70, d, generator=gen) * 3 + 50 for d in (5, 9, 7, 4, 12)[:L]]
        shift = torch.cat([x[:5].mean(0) for x in xs])
        grams, sums = ops._layer_grams(xs, shift, "none", block)
    finally:
        torch.set_num_threads(threads)
    upper = torch.triu(torch.ones(70, 70, dtype=torch.bool))
    offset = 0
    for l, x in enumerate(xs):
        s = shift[offset:offset + x.shape[1]]
        ref = _shifted_gram(x, s)
        torch.testing.assert_close(grams[l][upper].double(), ref[upper], rtol=1e-5, atol=1e-4)
        if block == 0:  # the full product: every entry
            torch.testing.assert_close(grams[l].double(), ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(sums[offset:offset + x.shape[1]], (x.double() - s.double()).sum(0),
                                   rtol=1e-6, atol=1e-4)
        offset += x.shape[1]


def test_shift_features_layouts_and_first_row_default(device, gen):
    xs = [torch.randn(33, 5, generator=gen).to(device) + 7,
          (torch.randn(40, 5, generator=gen) * 3).to(device).t().contiguous().t()[:33]]  # a strided view
    shift = torch.randn(10, generator=gen, dtype=torch.float64).to(device)
    out, sums = ops._shift_features(xs, shift, torch.float32, "none")
    assert out.shape == (2, 33, 5) and sums.dtype == torch.float64
    for g, x in enumerate(xs):
        s = shift[5 * g:5 * g + 5]
        torch.testing.assert_close(out[g].double(), x.double() - s, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(sums[5 * g:5 * g + 5], (x.double() - s).sum(0), atol=1e-4, rtol=1e-6)
    first, _ = ops._shift_features(xs, None, torch.float64, "none")
    for g, x in enumerate(xs):
        torch.testing.assert_close(first[g], (x - x[0]).double(), atol=1e-5, rtol=1e-6)
    assert ops._shift_features(xs, shift, torch.float32, "hilo")[0].shape == (2, 33, 20)
    with pytest.raises(RuntimeError, match=r"xs\[1\] is .* but xs\[0\] is .*one call takes layers of one width"):
        ops._shift_features([xs[0], xs[0][:, :4]], None, torch.float32, "none")
    with pytest.raises(RuntimeError, match=r"shift must be \(10,\)"):
        ops._shift_features(xs, shift[:9], torch.float32, "none")
    with pytest.raises(RuntimeError, match="split must be 'none', 'round' or 'hilo'"):
        ops._shift_features(xs, None, torch.float32, "half")
    with pytest.raises(RuntimeError, match="bfloat16 parts of float32"):
        ops._shift_features([x.double() for x in xs], None, torch.float64, "hilo")


def test_center_apply_and_rbf_kernels(device, gen):
    g = _grams(gen, L=2, n=9)
    for unbiased in (False, True):
        got = mpruner.center_gram(g.to(device), unbiased).cpu()
        for i in range(2):
            np.testing.assert_allclose(got[i].numpy(), NP.center(g[i].numpy(), unbiased), atol=1e-10, rtol=0)
    inv = torch.tensor([0.3, 0.05], dtype=torch.float64)
    diag = torch.diagonal(g, dim1=1, dim2=2)
    got = ops._rbf_apply(g.to(device), diag.to(device), inv.to(device)).cpu()
    for i in range(2):
        d = torch.diagonal(g[i])
        d2 = (d[:, None] + d[None, :] - 2 * g[i]).clamp_min(0)
        torch.testing.assert_close(got[i], torch.exp(-d2 * inv[i]))
    # The squared norms come from the diag argument, not from g's own diagonal.
    other = diag + torch.rand(2, 9, generator=gen, dtype=torch.float64)
    got = ops._rbf_apply(g.to(device), other.to(device), inv.to(device)).cpu()
    for i in range(2):
        d2 = (other[i][:, None] + other[i][None, :] - 2 * g[i]).clamp_min(0)
        torch.testing.assert_close(got[i], torch.exp(-d2 * inv[i]))
    with pytest.raises(RuntimeError, match=r"diag must be \(B, n\) = \(2, 9\)"):
        ops._rbf_apply(g.to(device), diag[:, :5].to(device), inv.to(device))


@pytest.mark.parametrize("bad", [10, -1])
def test_hsic_partials_rejects_lengths_outside_the_grams(device, gen, bad):
    """A direct call with lengths[b] > T would read past the Grams (the CUDA kernel indexes by it):
    the shared argument check stops it on every backend, naming the entry and the bound."""
    grams = torch.randn(2, 3, 9, 9, generator=gen).to(device)
    with pytest.raises(RuntimeError, match=rf"lengths\[1\]={bad} is outside \[0, 9\]"):
        ops._hsic_partials(grams, torch.tensor([9, bad, 4], device=device), False)
    with pytest.raises(RuntimeError, match=r"lengths must be integers"):
        ops._hsic_partials(grams, torch.tensor([9.0, 3.0, 4.0], device=device), False)
    with pytest.raises(RuntimeError, match=rf"lengths\[1\]={bad} is outside"):
        ops.token_hsic(grams, torch.tensor([9, bad, 4], device=device), False)


def test_hsic_partials_without_lengths_takes_every_row(device, gen):
    grams = torch.randn(3, 2, 11, 11, generator=gen, dtype=torch.float64).to(device)
    grams = grams + grams.transpose(-1, -2)
    for unbiased in (False, True):
        full = ops._hsic_partials(grams, torch.tensor([11, 11], device=device), unbiased)
        none = ops._hsic_partials(grams, None, unbiased)
        for a, b in zip(full, none):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(params=["tiled", "blocked"])
def hsic_kernel(request, device, monkeypatch):
    """Both CUDA reductions (MPRUNER_HSIC_KERNEL); the CPU has one kernel and runs once."""
    if device.type == "cpu" and request.param != "tiled":
        pytest.skip("the switch selects a CUDA kernel")
    monkeypatch.setenv("MPRUNER_HSIC_KERNEL", request.param)
    return request.param


@pytest.mark.parametrize("budget", [None, 49152])  # the device's shared memory, or a small one: layer blocks
@pytest.mark.parametrize("unbiased", [False, True])
def test_a_300_layer_matrix(device, gen, unbiased, monkeypatch, hsic_kernel, budget):
    """More layers than one GPU thread block stages at once (256 was the old CUDA cap; a small
    MPRUNER_HSIC_SHARED_BYTES makes many layer blocks): the CUDA kernels and the CPU give the
    float64 reference's matrix."""
    if budget is not None:
        if device.type == "cpu":
            pytest.skip("MPRUNER_HSIC_SHARED_BYTES bounds the CUDA kernels' shared memory")
        monkeypatch.setenv("MPRUNER_HSIC_SHARED_BYTES", str(budget))
    L, n = 300, 12
    z = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    feats = [z @ torch.randn(3, 4, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(n, 4, generator=gen,
             dtype=torch.float64) for _ in range(L)]
    want = mpruner.reference.cka_matrix(feats, "linear", unbiased)
    got = mpruner.cka_matrix([f.to(device) for f in feats], unbiased=unbiased).cpu()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    acc = mpruner.CKAAccumulator(unbiased=unbiased)
    acc.update([f.to(device) for f in feats])
    torch.testing.assert_close(acc.compute().cpu(), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("select", ["sort", "radix"])
def test_rbf_bandwidths_select_the_median_exactly(device, gen, select):
    """Both selections give the float32 distances' exact median (np.median of all n^2 entries),
    with ties: duplicated samples make many equal distances and zeros."""
    for n in (2, 5, 40, 301):
        x = torch.randn(n, 6, generator=gen)
        x[n // 2:] = x[: n - n // 2].clone()  # every sample twice (or nearly): ties, and zero distances
        g = (x @ x.T)[None].repeat(2, 1, 1)
        g[1] *= 3.0
        got = ops._rbf_bandwidths(g.to(device), 0.5, select).cpu()
        for i in range(2):
            d = torch.diagonal(g[i])
            d2 = (d[:, None] + d[None, :] - 2.0 * g[i]).clamp_min(0.0)
            med = np.median(d2.numpy().astype(np.float64))
            want = 1.0 / (2 * 0.25 * med) if med > 0 else 0.0
            assert got[i].item() == pytest.approx(want, rel=1e-12), (n, i, select)
    with pytest.raises(RuntimeError, match=r"select='radix' needs float32"):
        ops._rbf_bandwidths(torch.eye(4, dtype=torch.float64)[None].to(device), 0.5, "radix")
    with pytest.raises(RuntimeError, match=r"select must be 'auto', 'sort' or 'radix'"):
        ops._rbf_bandwidths(torch.eye(4)[None].to(device), 0.5, "heap")


def test_build_info():
    info = mpruner.build_info()
    assert info["version"] == mpruner.__version__
    assert set(info) >= {"cuda", "cuda_version", "cuda_archs", "openmp", "openmp_max_threads"}
    assert info["cuda"] == mpruner.cuda_built()


def test_cuda_tensor_without_cuda_build_is_a_clear_error():
    if mpruner.cuda_built() or not torch.cuda.is_available():
        pytest.skip("needs a GPU and a CPU-only build")
    with pytest.raises(NotImplementedError, match="CUDA"):
        ops.hsic_matrix(torch.randn(2, 5, 5, device="cuda"), False)


def test_token_hsic_fused_rejects_bad_arguments(gen):
    hs = [torch.randn(2, 6, 4, generator=gen), torch.randn(2, 6, 4, generator=gen)]
    pos, n = torch.arange(6).expand(2, 6), torch.tensor([6, 5])
    with pytest.raises(RuntimeError, match=r"positions\[1, 2\]=6 is outside \[0, 6\)"):
        bad = pos.clone()
        bad[1, 2] = 6
        ops._token_hsic_fused(hs, bad, n, False, 2**20)
    with pytest.raises(RuntimeError, match=r"lengths\[0\]=7 is outside"):
        ops._token_hsic_fused(hs, pos, torch.tensor([7, 5]), False, 2**20)
    with pytest.raises(RuntimeError, match=r"hidden\[1\] is Double but hidden\[0\] is Float"):
        ops._token_hsic_fused([hs[0], hs[1].double()], pos, n, False, 2**20)
    with pytest.raises(RuntimeError, match=r"hidden\[1\] must be \(B, T, D\)"):
        ops._token_hsic_fused([hs[0], hs[1][:, :5]], pos, n, False, 2**20)
    with pytest.raises(RuntimeError, match=r"max_gram_bytes must be > 0"):
        ops._token_hsic_fused(hs, pos, n, False, 0)

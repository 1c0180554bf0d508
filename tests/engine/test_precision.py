"""The GEMM precision modes (mpruner/engine/precision.py): names and aliases, the CPU's
bfloat16 matrix engine detected at run time (mocked here), the fallback to "highest" with one
warning, the scoped matmul setting, and each mode's CKA against float64 with the bfloat16
arithmetic forced on (MPRUNER_CPU_BF16=1: the exact numerics of a matrix engine, slowly)."""
import warnings

import pytest
import torch

import mpruner
from mpruner.engine import precision as P
from mpruner.engine.ops import ops

from tests.helpers.layer_data import SEEDS, structured_layers

# The bounds on |CKA - CKA in float64| (documented with the measured values).
BOUNDS = {"highest": 1e-6, "high": 1e-5, "medium": 1e-3}


@pytest.fixture
def bf16_engine(monkeypatch):
    """A CPU that reports a bfloat16 matrix engine: the split arithmetic runs (on any CPU)."""
    monkeypatch.setenv(P.FORCE_ENV, "1")


@pytest.fixture
def no_bf16_engine(monkeypatch):
    """A CPU reported with AVX512 but neither AMX-BF16 nor AVX512-BF16 (the detection mocked)."""
    monkeypatch.delenv(P.FORCE_ENV, raising=False)
    monkeypatch.setattr(P, "_detected", lambda: P.CpuMatrixEngine("AVX512", False, False))


def _batches(gen, offset, count=3, n=48):
    return [structured_layers(gen, n=n, dims=(12, 8, 20), dtype=torch.float32, offset=offset)
            for _ in range(count)]


def test_names_follow_torch_and_tf32_is_high():
    assert P.PRECISIONS == ("highest", "high", "medium")
    assert [P.canonical(p) for p in ("highest", "high", "medium", "tf32")] == ["highest", "high", "medium", "high"]
    with pytest.raises(ValueError, match="'highest', 'high', 'medium', 'tf32'.*got 'fast'"):
        P.canonical("fast")


@pytest.mark.parametrize("call", [
    lambda xs, p: mpruner.cka_matrix(xs, precision=p),
    lambda xs, p: mpruner.cka(xs[0], xs[1], precision=p),
    lambda xs, p: mpruner.gram(xs[0], precision=p),
    lambda xs, p: mpruner.CKAAccumulator(precision=p),
    lambda xs, p: mpruner.token_cka([x[None] for x in xs], precision=p),
    lambda xs, p: mpruner.analyze(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)),
                                  [torch.randn(8, 4)], precision=p, progress=False),
], ids=["cka_matrix", "cka", "gram", "CKAAccumulator", "token_cka", "analyze"])
def test_every_entry_point_refuses_an_unknown_precision_listing_the_valid_ones(gen, call):
    xs = [torch.randn(8, 4, generator=gen) for _ in range(2)]
    with pytest.raises(ValueError, match=r"precision must be one of 'highest', 'high', 'medium', 'tf32'"):
        call(xs, "bf16")


def test_detection_reads_the_cpu_flags_and_the_override(monkeypatch):
    P._detected.cache_clear()
    monkeypatch.setattr(P, "_cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    monkeypatch.delenv(P.FORCE_ENV, raising=False)
    try:
        info = P.cpu_matrix_engine()
        assert info.amx_bf16 and not info.avx512_bf16 and info.bf16
        assert "AMX-BF16" in info.describe()
        monkeypatch.setenv(P.FORCE_ENV, "0")
        assert not P.cpu_matrix_engine().bf16 and "MPRUNER_CPU_BF16=0" in P.cpu_matrix_engine().describe()
        monkeypatch.setenv(P.FORCE_ENV, "yes")
        with pytest.raises(ValueError, match="MPRUNER_CPU_BF16 must be 1"):
            P.cpu_matrix_engine()
    finally:
        P._detected.cache_clear()


@pytest.mark.parametrize("mode", ["high", "medium", "tf32"])
def test_a_cpu_without_bf16_falls_back_to_highest_with_one_warning(no_bf16_engine, gen, mode):
    xs = structured_layers(gen, n=32, dtype=torch.float32)
    highest = mpruner.cka_matrix(xs)
    with pytest.warns(RuntimeWarning, match=r"this CPU lacks \(AVX512, no AMX-BF16 or AVX512-BF16\).*'highest'") as w:
        got = mpruner.cka_matrix(xs, precision=mode)
    assert len([x for x in w if "matrix engine" in str(x.message)]) == 1
    assert torch.equal(got, highest)  # exactly the highest path: never slower, same numbers
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        acc = mpruner.CKAAccumulator(precision=mode)
        for _ in range(3):
            acc.update(xs)
    assert len([x for x in w if "matrix engine" in str(x.message)]) == 1  # once per accumulator, not per batch


def test_the_matmul_setting_is_scoped_on_the_cpu():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with P.gemm_scope("medium", torch.device("cpu")):
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        with P.gemm_scope("highest", torch.device("cpu")):
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_the_split_is_exact_bfloat16_and_reproduces_float32_to_2_pow_minus_16(gen):
    x = (torch.randn(64, 33, generator=gen) * torch.logspace(-20, 20, 33)).float()
    shift = torch.zeros(33)
    hilo, _ = ops._shift_features([x], shift, torch.float32, "hilo")
    d = x.shape[1]
    hi, hi2, lo, hi3 = hilo[0].split(d, dim=1)
    # torch's own float -> bfloat16 conversion is the independent reference of the rounding
    ref_hi = x.to(torch.bfloat16).float()
    assert torch.equal(hi, ref_hi) and torch.equal(hi2, hi) and torch.equal(hi3, hi)
    assert torch.equal(lo, (x - ref_hi).to(torch.bfloat16).float())
    assert torch.equal(lo.to(torch.bfloat16).float(), lo)  # both parts are exact bfloat16 values
    rel = ((hi.double() + lo.double() - x.double()).abs() / x.double().abs()).max()
    assert rel <= 2.0 ** -16
    rounded, _ = ops._shift_features([x], shift, torch.float32, "round")
    assert torch.equal(rounded[0], ref_hi)


@pytest.mark.parametrize("path", ["cpu", "device"])
@pytest.mark.parametrize("seed", SEEDS)
def test_each_mode_against_float64_with_offsets(bf16_engine, monkeypatch, path, seed):
    if path == "device":
        monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    gen = torch.Generator().manual_seed(seed)
    for offset in (0.0, 100.0, 1e4):
        batches = _batches(gen, offset)
        ref = mpruner.CKAAccumulator()
        for b in batches:
            ref.update([x.double() for x in b])
        exact = ref.compute()
        errs = {}
        for mode in P.PRECISIONS:
            acc = mpruner.CKAAccumulator(precision=mode)
            for b in batches:
                acc.update(b)
            errs[mode] = float((acc.compute() - exact).abs().max())
            one = float((mpruner.cka_matrix(batches[0], precision=mode)
                         - mpruner.cka_matrix([x.double() for x in batches[0]])).abs().max())
            assert errs[mode] <= BOUNDS[mode] and one <= BOUNDS[mode], (offset, mode, errs[mode], one)
        # the modes are really different arithmetic (medium rounds to 8 bits)
        assert errs["medium"] > errs["highest"]


def test_token_cka_modes_against_float64(bf16_engine, gen):
    hidden = [torch.randn(3, 20, 16, generator=gen) + 50 for _ in range(3)]
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    exact = mpruner.token_cka([h.double() for h in hidden], mask)
    for mode in P.PRECISIONS:
        err = float((mpruner.token_cka(hidden, mask, precision=mode) - exact).abs().max())
        assert err <= BOUNDS[mode], (mode, err)


@pytest.mark.parametrize("mode", ["high", "medium"])
def test_float64_input_is_computed_in_float64_whatever_the_mode(bf16_engine, gen, mode):
    xs = structured_layers(gen, n=30)  # float64
    assert torch.equal(mpruner.cka_matrix(xs, precision=mode), mpruner.cka_matrix(xs))
    hidden = [torch.randn(2, 9, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    assert torch.equal(mpruner.token_cka(hidden, precision=mode), mpruner.token_cka(hidden))


def test_analyze_records_the_precision(gen):
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6))
    data = [torch.randn(16, 6, generator=gen) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback, where the CPU has no bf16 engine
        a = mpruner.analyze(model, data, precision="tf32", progress=False)
    assert a.options["precision"] == "high"
    ref = mpruner.analyze(model, data, progress=False)
    torch.testing.assert_close(a.cka, ref.cka, atol=1e-4, rtol=0)

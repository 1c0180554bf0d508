"""The minibatch sums' device (GPU) path (mpruner/engine/minibatch.py), run here on CPU tensors
(MPRUNER_ENGINE_PATH=device): the composite the GPU takes, with the CPU kernels. Same results
as the CPU path, a fixed number of ATen calls per update() whatever L is, no host sync per
batch (NaN/Inf raise at compute(), naming the layer and the batch)."""
import pytest
import torch

import mpruner
from mpruner import reference as R
from tests.helpers.host_reads import HostReads


@pytest.fixture
def device_path(monkeypatch):
    monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")


def _layers(gen, L, n=24, widths=(16,)):
    """L layers in runs of one width (like a network's stages): widths[0] first, then widths[1], ..."""
    z = torch.randn(n, 4, generator=gen)
    ds = [widths[l * len(widths) // L] for l in range(L)]
    return [z @ torch.randn(4, d, generator=gen) + 0.3 * torch.randn(n, d, generator=gen) + 2.0 for d in ds]


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("widths", [(16,), (16, 9)])  # one run of one width, or two runs
def test_update_ops_do_not_grow_with_layers(device_path, gen, kernel, widths):
    counts = {}
    for L in (2, 8, 24):
        acc = mpruner.CKAAccumulator(kernel=kernel)
        xs = _layers(gen, L, widths=widths)
        acc.update(xs)  # the first batch allocates the sums
        with HostReads() as mode:
            acc.update(xs)
        counts[L] = len(mode.ops)
        assert mode.syncs == 0, f"update() read device values back: {mode.reads}"
    assert counts[2] == counts[8] == counts[24], counts
    assert counts[24] <= (50 if kernel == "linear" else 75), counts


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_device_path_matches_cpu_path(monkeypatch, gen, kernel, unbiased):
    xs = [x.double() for x in _layers(gen, 5, n=300, widths=(16, 7, 16))]  # n > the GEMM row block
    batches = [[x[:150] for x in xs], [x[150:] for x in xs]]

    def run():
        acc = mpruner.CKAAccumulator(kernel=kernel, unbiased=unbiased)
        for b in batches:
            acc.update(b)
        return acc.compute()

    cpu = run()
    monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    dev = run()
    torch.testing.assert_close(dev, cpu, atol=1e-12, rtol=0)
    torch.testing.assert_close(dev, R.minibatch_cka(batches, kernel, unbiased), atol=1e-10, rtol=0)
    g = mpruner.engine.ops.ops.grams(xs, kernel, 0.5, True)  # triangular: the upper triangle is right
    full = mpruner.engine.ops.ops.grams(xs, kernel, 0.5, False)
    torch.testing.assert_close(torch.triu(g), torch.triu(full), atol=1e-9, rtol=1e-12)


def test_nan_raises_at_compute_naming_layer_and_batch(device_path, gen):
    acc = mpruner.CKAAccumulator(layer_names=["a", "b", "c"])
    good = _layers(gen, 3)
    bad = [x.clone() for x in good]
    bad[1][4, 2] = float("nan")
    bad[2][0, 0] = float("inf")
    acc.update(good)
    acc.update(bad)  # no error yet: nothing is read back per batch
    acc.update(bad)
    with pytest.raises(ValueError, match=r"NaN or Inf in the activations of b, c \(batch 1\)"):
        acc.compute()


def test_analyze_nan_names_layer_and_batch_on_the_device_path(device_path, gen):
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6))
    bad = torch.randn(8, 6, generator=gen)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in the output of '0', '1', '2' in batch 1"):
        mpruner.analyze(model, [torch.randn(8, 6, generator=gen), bad], progress=False)


def test_skip_masks_bad_batches_without_a_sync(device_path, gen):
    """nan_policy='skip' on the device path: bad batches add zeros on the device, the counters
    learn of them at the first read, and the result equals the good batches alone."""
    good = [_layers(gen, 4, n=20) for _ in range(3)]
    bad = [x.clone() for x in good[1]]
    bad[2][3, 1] = float("nan")
    acc = mpruner.CKAAccumulator(nan_policy="skip")
    acc.update(good[0])
    with HostReads() as mode:
        acc.update(bad)
        acc.update(good[2])
    assert mode.syncs == 0, f"update() read device values back: {mode.reads}"
    assert (acc.num_skipped, acc.num_batches, acc.num_samples) == (1, 2, 40)
    ref = mpruner.CKAAccumulator()
    for b in (good[0], good[2]):
        ref.update(b)
    torch.testing.assert_close(acc.compute(), ref.compute(), atol=1e-12, rtol=0)
    # the state written out and a merge see the settled counts
    state = acc.state_dict()
    assert (state["num_batches"], state["num_skipped"]) == (2, 1)


def test_host_reads_counts_reads_that_bypass_the_dispatcher():
    """The counter the no-sync tests rely on sees .tolist(), bool() and .item() on CPU tensors,
    which never reach aten::_local_scalar_dense there (on a GPU each one waits for the device)."""
    t = torch.arange(3.0)
    with HostReads() as mode:
        t.tolist()
        bool(t[0])
        t.sum().item()
        int(t[1])
    assert mode.reads.count("Tensor.tolist") == 1 and mode.syncs >= 4, mode.reads
    assert "tolist" not in torch.Tensor.__dict__  # the patch is undone


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_update_after_a_skip_reads_nothing_back(device_path, gen, policy):
    """With a device-side skip pending, the next update() must not settle the counters (that
    would read them back every batch): the batch index is kept on the host."""
    good = _layers(gen, 3, n=20)
    bad = [x.clone() for x in good]
    bad[0][1, 1] = float("nan")
    acc = mpruner.CKAAccumulator(nan_policy=policy)
    acc.update(good)
    with HostReads() as mode:
        acc.update(bad)
        acc.update(good)
        acc.update(good)
    assert mode.syncs == 0, f"update() read device values back: {mode.reads}"
    if policy == "skip":
        assert (acc.num_batches, acc.num_skipped) == (3, 1)
    else:
        with pytest.raises(ValueError, match=r"\(batch 1\)"):
            acc.compute()


def test_skip_every_batch_on_the_device_path(device_path, gen):
    bad = _layers(gen, 3)
    bad[0][0, 0] = float("inf")
    acc = mpruner.CKAAccumulator(nan_policy="skip")
    acc.update(bad)
    acc.update(bad)
    with pytest.raises(RuntimeError, match=r"no batch accumulated yet.*2 batches were skipped"):
        acc.compute()
    assert acc.num_batches == 0 and acc.num_skipped == 2
    acc.update(_layers(gen, 3))  # still usable afterwards
    assert acc.num_batches == 1 and torch.isfinite(acc.compute()).all()


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_fused_epilogue_matches_the_aten_glue(monkeypatch, gen, kernel, unbiased, policy):
    """MPRUNER_FUSED_EPILOGUE=1 (one _hsic_finish call after the HSIC pass) gives the sums,
    thresholds, NaN/Inf records and skip counts of the ATen glue it replaces."""
    monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    batches = [[x.double() for x in _layers(gen, 5, n=18, widths=(16, 7))] for _ in range(4)]
    batches[2][3] = batches[2][3].clone()
    batches[2][3][1, 1] = float("nan")

    def run(fused):
        monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", "1" if fused else "0")
        acc = mpruner.CKAAccumulator(kernel=kernel, unbiased=unbiased, nan_policy=policy)
        for b in batches:
            acc.update(b)
        return acc

    fused, glue = run(True), run(False)
    assert fused._est.fused and not glue._est.fused
    torch.testing.assert_close(fused._est.flags, glue._est.flags, rtol=0, atol=0)
    if policy == "skip":
        assert (fused.num_batches, fused.num_skipped, fused.num_samples) == (3, 1, 54)
        torch.testing.assert_close(fused._est.sums, glue._est.sums, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fused._est.thresholds, glue._est.thresholds, rtol=1e-14, atol=0)
        ref = mpruner.CKAAccumulator(kernel=kernel, unbiased=unbiased)
        for b in batches[:2] + batches[3:]:
            ref.update(b)
        monkeypatch.delenv("MPRUNER_ENGINE_PATH")
        torch.testing.assert_close(fused.compute(), ref.compute(), rtol=0, atol=1e-10)
    else:
        for acc in (fused, glue):
            with pytest.raises(ValueError, match=r"layer 3 \(batch 2\)"):
                acc.compute()


def test_fused_epilogue_takes_fewer_calls(device_path, gen, monkeypatch):
    counts = {}
    for fused in ("0", "1"):
        monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", fused)
        acc = mpruner.CKAAccumulator(nan_policy="skip")
        xs = _layers(gen, 12)
        acc.update(xs)
        with HostReads() as mode:
            acc.update(xs)
        assert mode.syncs == 0, mode.reads
        counts[fused] = len(mode.ops)
    assert counts["1"] < counts["0"] - 8, counts


def test_fused_epilogue_switch_is_checked(monkeypatch):
    monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", "yes")
    with pytest.raises(ValueError, match="MPRUNER_FUSED_EPILOGUE must be 0 or 1"):
        mpruner.CKAAccumulator()

"""The minibatch sums' device (GPU) path (mpruner/engine/minibatch.py), run here on CPU tensors
(MPRUNER_ENGINE_PATH=device): the composite the GPU takes, with the CPU kernels. Same results
as the CPU path, a fixed number of ATen calls per update() whatever L is, no host sync per
batch (NaN/Inf raise at compute(), naming the layer and the batch)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mpruner
from mpruner import reference as R


class CountOps(TorchDispatchMode):
    """Counts the ATen calls that do work (views only change metadata)."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(func.name())
        if func._schema.name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::item"):
            self.syncs += 1  # values read back to the host
        return func(*args, **(kwargs or {}))


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
        with CountOps() as mode:
            acc.update(xs)
        counts[L] = len(mode.ops)
        assert mode.syncs == 0, f"update() read device values back: {mode.ops}"
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
    with CountOps() as mode:
        acc.update(bad)
        acc.update(good[2])
    assert mode.syncs == 0, f"update() read device values back: {mode.ops}"
    assert (acc.num_skipped, acc.num_batches, acc.num_samples) == (1, 2, 40)
    ref = mpruner.CKAAccumulator()
    for b in (good[0], good[2]):
        ref.update(b)
    torch.testing.assert_close(acc.compute(), ref.compute(), atol=1e-12, rtol=0)
    # the state written out and a merge see the settled counts
    state = acc.state_dict()
    assert (state["num_batches"], state["num_skipped"]) == (2, 1)


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

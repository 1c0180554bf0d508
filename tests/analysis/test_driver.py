"""mpruner.analyze on tiny models: results against a float64 NumPy computation, batches, the
cross-model matrix, bad input, and a model left exactly as it was."""
import collections
import copy
import itertools
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import mpruner

from mpruner.analysis import Analysis, analyze
from tests.helpers import np_reference as R
from tests.helpers.lm_blocks import IDENTITY, batches, massive, planted
from tests.helpers.analysis_models import TokenNet, minibatch_reference, mlp, token_batches

torch.set_num_threads(1)


# ---------------------------------------------------------------- tiny models


# ---------------------------------------------------------------- reference


@torch.no_grad()
def mlp_features(model, x):
    out, h = [], x.double()
    for block in model:
        lin = block[0]
        h = torch.tanh(nn.functional.linear(h, lin.weight.double(), lin.bias.double()))
        out.append(h.numpy())
    return out


def assert_untouched(model, modes, params):
    assert [m.training for m in model.modules()] == modes
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert len(list(model.named_parameters())) == len(params)
    for (name, p), (name0, p0, grad0) in zip(model.named_parameters(), params):
        assert name == name0 and torch.equal(p, p0) and p.requires_grad == grad0 and p.grad is None


def snapshot(model):
    return [m.training for m in model.modules()], [(n, p.detach().clone(), p.requires_grad)
                                                for n, p in model.named_parameters()]


# ---------------------------------------------------------------- results
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("batch", ["tensor", "tuple", "namedtuple", "dict"])
def test_mlp_matches_float64_reference(gen, unbiased, batch):
    model = mlp()
    xs = [torch.randn(n, 12, generator=gen) for n in (9, 8, 10)]
    pair = collections.namedtuple("Pair", "x y")
    wrap = {"tensor": lambda x: x, "tuple": lambda x: (x, torch.zeros(len(x))), "dict": lambda x: {"input": x},
            "namedtuple": lambda x: pair(x, 3)}[batch]
    result = analyze(model, [wrap(x) for x in xs], unbiased=unbiased, progress=False)
    expected = minibatch_reference([mlp_features(model, x) for x in xs], unbiased)
    assert isinstance(result, Analysis) and result.cka.dtype == torch.float64 and result.cka.device.type == "cpu"
    np.testing.assert_allclose(result.cka.numpy(), expected, atol=2e-6)
    assert result.layer_names == [f"{i}" for i in range(5)]
    assert result.num_samples == 27 and result.options["num_batches"] == 3
    assert result.options["view"] == "mean" and result.options["unbiased"] is unbiased


def test_rbf_kernel(gen):
    model = mlp(depth=3)
    xs = [torch.randn(12, 12, generator=gen) for _ in range(2)]
    result = analyze(model, xs, kernel="rbf", progress=False)
    h = np.zeros((3, 3))
    for x in xs:
        grams = [R.gram(f, "rbf", 0.5) for f in mlp_features(model, x)]
        h += np.array([[R.hsic(a, b, True) for b in grams] for a in grams])
    np.testing.assert_allclose(result.cka.numpy(), h / np.sqrt(np.outer(np.diag(h), np.diag(h))), atol=1e-5)


def test_tuple_outputs_and_forward_override(gen):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return torch.tanh(self.fc(x)), "attention weights"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(3))

        def forward(self, x, scale):
            for block in self.blocks:
                x = block(x * scale)[0]
            return x

    torch.manual_seed(0)
    model = Net()
    batches = [{"x": torch.randn(6, 6, generator=gen), "unused": 1} for _ in range(2)]
    result = analyze(model, batches, layers="blocks", forward=lambda m, b: m(b["x"], 2.0), progress=False)
    assert result.cka.shape == (3, 3) and torch.allclose(torch.diagonal(result.cka), torch.ones(3, dtype=torch.float64))


def test_cross_model_matrix(gen):
    from mpruner import remove_layers

    model = mlp()
    xs = [torch.randn(8, 12, generator=gen) for _ in range(3)]
    alone = analyze(model, xs, progress=False)
    twin = analyze(model, xs, other=copy.deepcopy(model), progress=False)
    assert twin.is_cross and twin.other_layer_names == twin.layer_names
    np.testing.assert_allclose(twin.cka.numpy(), alone.cka.numpy(), atol=1e-9)
    pruned = remove_layers(model, [1, 3])
    cross = analyze(model, xs, other=pruned, progress=False)
    assert cross.cka.shape == (5, 3) and cross.other_layer_names == ["0", "1", "2"]
    assert cross.cka[0, 0] == pytest.approx(1.0, abs=1e-9)  # the kept first block computes the same thing
    assert cross.options["other_model"] == "Sequential"
    with pytest.raises(ValueError, match="adjacent"):
        cross.adjacent()


def test_small_last_batch_is_skipped_and_counted(gen):
    model = mlp(depth=3)
    xs = [torch.randn(8, 12, generator=gen), torch.randn(8, 12, generator=gen), torch.randn(3, 12, generator=gen)]
    with pytest.warns(RuntimeWarning, match=r"skipped 1 batch\(es\) / 3 samples.*needs >= 4"):
        result = analyze(model, xs, progress=False)
    assert result.num_samples == 16 and result.num_skipped == 3 and result.options["skipped_batches"] == 1
    expected = minibatch_reference([mlp_features(model, x) for x in xs[:2]])
    np.testing.assert_allclose(result.cka.numpy(), expected, atol=2e-6)
    biased = analyze(model, xs, unbiased=False, progress=False)  # n >= 2 suffices
    assert biased.num_samples == 19 and biased.num_skipped == 0
    with pytest.raises(ValueError, match=r"all 2 had fewer than 4 samples.*unbiased=False"):
        analyze(model, [xs[2], xs[2]], progress=False)


def test_max_batches_reads_no_further(gen):
    model = mlp(depth=3)
    drawn = []

    def stream():
        for i in itertools.count():
            drawn.append(i)
            yield torch.randn(6, 12, generator=gen)

    result = analyze(model, stream(), max_batches=3, progress=False)
    assert drawn == [0, 1, 2] and result.num_samples == 18 and result.options["max_batches"] == 3


def test_progress_bar(gen, capsys):
    analyze(mlp(depth=2), [torch.randn(6, 12, generator=gen)] * 2, progress=True)
    assert "mpruner analyze" in capsys.readouterr().err


# ---------------------------------------------------------------- the model is left as it was
def test_model_modes_and_hooks_restored(gen):
    model = mlp()
    model.train()
    model[2].eval()  # mixed modes survive exactly
    modes, params = snapshot(model)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    own_hooks = dict(model[0]._forward_hooks)
    analyze(model, [torch.randn(6, 12, generator=gen)], progress=False)
    assert seen == [False]  # ran in eval mode
    assert dict(model[0]._forward_hooks) == own_hooks  # the user's hook is kept, ours removed
    model[0]._forward_hooks.clear()
    assert_untouched(model, modes, params)


def test_model_restored_when_forward_raises(gen):
    model = mlp()
    model.train()
    modes, params = snapshot(model)

    def forward(m, batch):
        if batch.shape[0] == 7:
            raise RuntimeError("boom in batch 1")
        assert not torch.is_grad_enabled()
        return m(batch)

    with pytest.raises(RuntimeError, match="boom") as info:
        analyze(model, [torch.randn(6, 12, generator=gen), torch.randn(7, 12, generator=gen)], forward=forward,
                progress=False)
    if sys.version_info >= (3, 11):  # add_note exists from 3.11; there the note must be present
        assert any("batch 1" in note for note in info.value.__notes__)
    assert_untouched(model, modes, params)


def test_nan_names_layer_and_batch(gen):
    model = mlp()
    model.train()
    modes, params = snapshot(model)
    bad = torch.randn(6, 12, generator=gen)
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in the output of '0', '1', '2', '3', '4' in batch 1"):
        analyze(model, [torch.randn(6, 12, generator=gen), bad], progress=False)
    assert_untouched(model, modes, params)

    class NaNAfter(nn.Module):
        def forward(self, x):
            return x / 0 * 0  # NaN from here on

    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), NaNAfter(), nn.Tanh())
    with pytest.raises(ValueError, match=r"output of '2', '3' in batch 0"):
        analyze(model, [torch.randn(5, 4, generator=gen)], progress=False)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(view="pool"), ValueError, "view must be one of 'flatten', 'mean', 'cls', 'last_token', 'tokens'; got 'pool'"),
    (dict(kernel="cosine"), ValueError, "kernel must be one of 'linear', 'rbf'"),
    (dict(max_batches=0), ValueError, "max_batches must be a positive integer"),
    (dict(forward="model"), TypeError, "forward must be a callable"),
    (dict(other="model"), TypeError, "other must be a torch.nn.Module"),
    (dict(layers=3), TypeError, "layers must be 'auto', a block-list name"),
])
def test_bad_arguments(gen, kwargs, error, match):
    with pytest.raises(error, match=match):
        analyze(mlp(), [torch.randn(6, 12, generator=gen)], progress=False, **kwargs)


def test_bad_data():
    model = mlp()
    with pytest.raises(TypeError, match=r"single Tensor; wrap one batch in a list: analyze\(model, \[batch\]\)"):
        analyze(model, torch.randn(6, 12), progress=False)
    with pytest.raises(TypeError, match="single dict"):
        analyze(model, {"x": torch.randn(6, 12)}, progress=False)
    with pytest.raises(TypeError, match=r"batch 0 is a str.*forward=lambda"):
        analyze(model, ["not a batch"], progress=False)
    with pytest.raises(ValueError, match="data yielded no batches"):
        analyze(model, [], progress=False)
    with pytest.raises(ValueError, match="other is the model itself"):
        analyze(model, [torch.randn(6, 12)], other=model, progress=False)


def test_data_on_another_device_is_moved_or_refused(gen):
    model = mlp(depth=2)
    # A batch that cannot reach the model's device is refused with the reason.
    with pytest.raises(RuntimeError, match=r"batch 0: cannot move batch\['x'\] from meta to the model's device cpu"):
        analyze(model, [{"x": torch.empty(6, 12, device="meta")}], forward=lambda m, b: m(b["x"]), progress=False)
    # The CKA may run elsewhere than the model (here the same CPU, named explicitly).
    result = analyze(model, [torch.randn(6, 12, generator=gen)], device="cpu", progress=False)
    assert result.options["device"] == "cpu"


def test_layer_that_does_not_run_or_runs_twice(gen):
    model = TokenNet()
    batches = token_batches(gen, sizes=(5,))
    with pytest.raises(RuntimeError, match=r"\['layers\.2', 'layers\.3'\] did not run in the forward pass of batch 0"):
        analyze(model, batches, layers="layers", forward=lambda m, b: m.layers[1](m.layers[0](m.embed(b["input_ids"]))),
                progress=False)
    twice = lambda m, b: m.layers[0](m(**b))  # noqa: E731
    with pytest.raises(RuntimeError, match=r"'layers\.0' ran twice in one forward pass \(batch 0\)"):
        analyze(model, batches, layers="layers", forward=twice, progress=False)
    for m in model.modules():
        assert not m._forward_hooks


# ---------------------------------------------------------------- normalize (decoder LMs' residual stream)
def test_normalized_cka_sees_past_a_massive_dimension():
    model = massive(planted("llama", layers=5))
    data = batches(pad=False)
    for b in data:
        b["input_ids"][:, ::4] = 5  # the massive token appears in every sequence
    raw = mpruner.analyze(model, data, view="tokens", normalize=None, progress=False)
    norm = mpruner.analyze(model, data, view="tokens", progress=False)
    assert norm.options["normalize"] == "rms" and raw.options["normalize"] is None  # decoder LM: rms by default
    assert 1 - float(raw.adjacent().min()) < 1e-4  # saturated: every block looks redundant
    adjacent = norm.adjacent()
    assert float(adjacent[IDENTITY - 1]) == pytest.approx(1.0, abs=1e-9)  # the planted block is found ...
    assert 1 - float(torch.cat([adjacent[:IDENTITY - 1], adjacent[IDENTITY:]]).max()) > 1e-3  # ... and told apart


def test_normalize_is_off_by_default_for_other_models():
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 6))
    a = mpruner.analyze(net, [torch.randn(8, 6)], layers="", progress=False)
    assert a.options["normalize"] is None
    with pytest.raises(ValueError, match="normalize must be 'auto', 'rms' or None"):
        mpruner.analyze(net, [torch.randn(8, 6)], layers="", normalize="l2", progress=False)

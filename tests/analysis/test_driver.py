"""mpruner.analyze on tiny models: results against a float64 NumPy computation, views,
batches, the cross-model matrix, and a model left exactly as it was."""
import collections
import copy
import itertools
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from tests.helpers import np_reference as R
from mpruner.analysis import Analysis, analyze

torch.set_num_threads(1)


# ---------------------------------------------------------------- tiny models
def mlp(depth=5, width=12, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)])


class Residual(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class TokenNet(nn.Module):
    """Embedding + residual token blocks in ``self.layers``; no masking inside, so padding
    positions carry values the views must leave out."""

    def __init__(self, depth=4, dim=10, vocab=30, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Residual(dim) for _ in range(depth))

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)
        return h

    @torch.no_grad()
    def hidden(self, input_ids):
        """Block outputs computed without hooks, float64."""
        out, h = [], self.embed(input_ids).double()
        for layer in self.layers:
            h = h + torch.tanh(nn.functional.linear(h, layer.fc.weight.double(), layer.fc.bias.double()))
            out.append(h)
        return out


class ConvNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1), nn.ReLU())
                                        for i in range(4)])
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def token_batches(gen, sizes=(6, 5, 7), T=9, vocab=30, left=False):
    batches = []
    for B in sizes:
        ids = torch.randint(1, vocab, (B, T), generator=gen)
        lengths = torch.randint(4, T + 1, (B,), generator=gen)
        lengths[0] = T
        pos = torch.arange(T)[None, :]
        mask = (pos >= T - lengths[:, None]) if left else (pos < lengths[:, None])
        ids = torch.where(mask, ids, 0)
        batches.append({"input_ids": ids, "attention_mask": mask.long()})
    return batches


# ---------------------------------------------------------------- reference
def minibatch_reference(per_batch, unbiased=True):
    """per_batch: list over batches of lists over layers of (n, d) arrays."""
    L = len(per_batch[0])
    h = np.zeros((L, L))
    for feats in per_batch:
        grams = [R.gram(np.asarray(f, dtype=np.float64)) for f in feats]
        h += np.array([[R.hsic(a, b, unbiased) for b in grams] for a in grams])
    return h / np.sqrt(np.outer(np.diag(h), np.diag(h)))


@torch.no_grad()
def mlp_features(model, x):
    out, h = [], x.double()
    for block in model:
        lin = block[0]
        h = torch.tanh(nn.functional.linear(h, lin.weight.double(), lin.bias.double()))
        out.append(h.numpy())
    return out


def masked_mean(h, mask):
    m = mask.double()[:, :, None]
    return ((h * m).sum(1) / m.sum(1)).numpy()


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


@pytest.mark.parametrize("left", [False, True])
def test_token_views_leave_out_padding(gen, left):
    model = TokenNet()
    batches = token_batches(gen, left=left)
    hidden = [model.hidden(b["input_ids"]) for b in batches]

    mean = analyze(model, batches, layers="layers", view="mean", progress=False)
    expected = minibatch_reference([[masked_mean(h, b["attention_mask"]) for h in hs]
                                    for hs, b in zip(hidden, batches)])
    np.testing.assert_allclose(mean.cka.numpy(), expected, atol=2e-6)
    assert mean.layer_names == [f"layers.{i}" for i in range(4)] and mean.options["layers"] == "layers"

    last = analyze(model, batches, layers="layers", view="last_token", progress=False)
    def last_real(h, mask):
        idx = [int(torch.nonzero(m).max()) for m in mask]
        return h[torch.arange(len(idx)), idx].numpy()
    expected = minibatch_reference([[last_real(h, b["attention_mask"]) for h in hs] for hs, b in zip(hidden, batches)])
    np.testing.assert_allclose(last.cka.numpy(), expected, atol=2e-6)

    flat = analyze(model, batches, layers="layers", view="flatten", progress=False)
    expected = minibatch_reference([[(h * b["attention_mask"][:, :, None]).reshape(len(h), -1).numpy() for h in hs]
                                    for hs, b in zip(hidden, batches)])
    np.testing.assert_allclose(flat.cka.numpy(), expected, atol=2e-6)

    if left:
        with pytest.raises(ValueError, match="left-padded.*last_token"):
            analyze(model, batches, layers="layers", view="cls", progress=False)
    else:
        cls = analyze(model, batches, layers="layers", view="cls", progress=False)
        expected = minibatch_reference([[h[:, 0].numpy() for h in hs] for hs in hidden])
        np.testing.assert_allclose(cls.cka.numpy(), expected, atol=2e-6)


def test_tokens_view_averages_per_sequence_cka(gen):
    model = TokenNet()
    batches = token_batches(gen, sizes=(4, 3))
    batches[1]["attention_mask"][2, 3:] = 0  # a 3-token sequence: too short for the unbiased estimator
    result = analyze(model, batches, layers="layers", view="tokens", progress=False)
    per_sequence = []
    for b in batches:
        hs = model.hidden(b["input_ids"])
        for s, mask in enumerate(b["attention_mask"].bool()):
            if mask.sum() >= 4:
                per_sequence.append(R.cka_matrix([h[s][mask].numpy() for h in hs], unbiased=True))
    np.testing.assert_allclose(result.cka.numpy(), np.mean(per_sequence, axis=0), atol=1e-5)
    assert result.num_samples == 6 and result.num_skipped == 1
    assert result.options["estimator"] == "per-sequence"
    assert result.options["num_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches) - 3


def test_conv_maps_use_the_spatial_mean(gen):
    model = ConvNet()
    xs = [torch.randn(5, 3, 6, 6, generator=gen) for _ in range(2)]
    result = analyze(model, xs, layers="features", progress=False)
    feats = []
    for x in xs:
        out, h = [], x
        with torch.no_grad():
            for block in model.features:
                h = block(h)
                out.append(h.double().mean((2, 3)).numpy())
        feats.append(out)
    np.testing.assert_allclose(result.cka.numpy(), minibatch_reference(feats), atol=2e-6)
    with pytest.raises(ValueError, match=r"view='cls' needs token outputs.*features\.0.*\(5, 6, 6, 6\).*'mean'"):
        analyze(model, xs, layers="features", view="cls", progress=False)


def test_layers_by_module_names_keep_the_given_order(gen):
    model = mlp()
    xs = [torch.randn(8, 12, generator=gen) for _ in range(2)]
    full = analyze(model, xs, progress=False)
    some = analyze(model, xs, layers=["3", "0", "4"], progress=False)
    assert some.layer_names == ["3", "0", "4"] and some.options["layers"] == "custom"
    np.testing.assert_allclose(some.cka.numpy(), full.cka[[3, 0, 4]][:, [3, 0, 4]].numpy(), atol=1e-12)


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


def test_nan_in_padding_is_ignored(gen):
    class PadNaN(nn.Module):
        def forward(self, x, mask):
            return torch.where(mask[:, :, None].bool(), x, float("nan"))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(5, 5) for _ in range(3))
            self.pad = PadNaN()

        def forward(self, x, attention_mask):
            for layer in self.layers:
                x = self.pad(torch.tanh(layer(x)), attention_mask)
            return x

    torch.manual_seed(0)
    x = torch.randn(6, 7, 5, generator=gen)
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[:, 5:] = 0
    for view in ("mean", "tokens", "last_token", "flatten"):
        result = analyze(Net(), [{"x": x, "attention_mask": mask}], layers="layers", view=view, progress=False)
        assert torch.isfinite(result.cka).all(), view


# ---------------------------------------------------------------- bad input
def test_unknown_layers_list_the_block_lists(gen):
    from tests.helpers.surgery_models import hf_model

    model, _ = hf_model("t5")
    with pytest.raises(ValueError, match=r"'encoder\.blocks'.*available block lists: 'encoder\.block' \(3 blocks\), "
                                         r"'decoder\.block' \(4 blocks\)"):
        analyze(model, [{}], layers="encoder.blocks", progress=False)
    with pytest.raises(ValueError, match=r"no submodule 'layers\.9'"):
        analyze(TokenNet(), [{}], layers=["layers.0", "layers.9"], progress=False)
    with pytest.raises(ValueError, match=r"'embed' is a Embedding, not a block list"):
        analyze(TokenNet(), [{}], layers="embed", progress=False)
    two = TokenNet()
    two.extra = nn.ModuleList([nn.Identity(), nn.Identity()])
    with pytest.raises(TypeError, match=r"no mpruner adapter recognises TokenNet.*'layers' \(4 blocks\), "
                                        r"'extra' \(2 blocks\).*--layers layers"):
        analyze(two, [{}], progress=False)
    with pytest.raises(ValueError, match=r"did you mean 'layers'"):
        analyze(TokenNet(), [{}], layers="layer", progress=False)
    with pytest.raises(ValueError, match="twice"):
        analyze(TokenNet(), [{}], layers=["layers.0", "layers.0"], progress=False)


def test_tokens_view_needs_the_mask(gen):
    model = TokenNet()
    batches = token_batches(gen, sizes=(5,))
    del batches[0]["attention_mask"]
    with pytest.raises(ValueError, match=r"view='tokens' needs the attention_mask.*batch 0 \(keys input_ids\).*"
                                         r"'attention_mask'"):
        analyze(model, batches, layers="layers", view="tokens", progress=False)
    # Float inputs (no token ids) have no padding: every token is real.
    dense = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    result = analyze(dense, [torch.randn(3, 6, 4, generator=gen)], view="tokens", progress=False)
    assert result.num_samples == 3 and result.options["num_tokens"] == 18
    with pytest.raises(ValueError, match="kernel='linear'"):
        analyze(dense, [torch.randn(3, 6, 4)], view="tokens", kernel="rbf", progress=False)


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


def test_decoder_layers_prefer_the_decoder_mask(gen):
    class Seq2Seq(TokenNet):
        def forward(self, input_ids, attention_mask=None, decoder_attention_mask=None):
            return super().forward(input_ids)

    model = Seq2Seq()
    model.decoder = model.layers  # the same blocks, reached as a decoder stack
    batches = token_batches(gen)
    for b in batches:
        b["decoder_attention_mask"], b["attention_mask"] = b["attention_mask"], torch.ones_like(b["attention_mask"])
    hidden = [model.hidden(b["input_ids"]) for b in batches]
    result = analyze(model, batches, layers="decoder", progress=False)
    assert result.layer_names[0] == "decoder.0"
    expected = minibatch_reference([[masked_mean(h, b["decoder_attention_mask"]) for h in hs]
                                    for hs, b in zip(hidden, batches)])
    np.testing.assert_allclose(result.cka.numpy(), expected, atol=2e-6)
    encoder = analyze(model, batches, layers="layers", progress=False)  # not a decoder: attention_mask
    expected = minibatch_reference([[masked_mean(h, b["attention_mask"]) for h in hs]
                                    for hs, b in zip(hidden, batches)])
    np.testing.assert_allclose(encoder.cka.numpy(), expected, atol=2e-6)

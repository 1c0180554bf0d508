"""A text corpus as one token stream, and causal-LM training batches cut from it.

``corpus_ids`` joins texts with the tokenizer's EOS token (the rule ``mpruner.perplexity``
reads its text by); ``lm_batches`` cuts the stream into windows with ``labels`` for the
model's own loss.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch


def corpus_ids(data, tokenizer=None) -> torch.Tensor:
    """``data`` as one 1-D int64 tensor of token ids (see :func:`mpruner.perplexity` for the joining rule)."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 1 or data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise ValueError(f"data as a tensor must be 1-D integer token ids (a concatenated corpus), got dtype "
                             f"{data.dtype} shape {tuple(data.shape)}; flatten batches with ids[mask.bool()]")
        return data.detach().to(torch.long).cpu()
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, (list, tuple)) or not all(isinstance(t, str) for t in data):
        raise TypeError("data must be a 1-D LongTensor of token ids or a list of strings (with tokenizer=)")
    if tokenizer is None:
        raise ValueError("data is text: pass tokenizer= (a Hugging Face tokenizer) or token ids as a 1-D LongTensor")
    sep = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else \
        tokenizer("\n", add_special_tokens=False)["input_ids"]
    encoded = tokenizer(list(data), add_special_tokens=False)["input_ids"]
    out: List[int] = []
    for i, seq in enumerate(encoded):
        if i:
            out.extend(sep)
        out.extend(seq)
    return torch.tensor(out, dtype=torch.long)


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

"""``perplexity``: held-out perplexity of a causal language model over a tokenized corpus.

The corpus is one long token sequence cut into non-overlapping windows, so the number
does not move with batch size, padding or sequence order; the window length and the BOS
choice, which do move it, are recorded in the result.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..adapters import family_traits
from ..data.corpus import corpus_ids
from .loss import token_nll_sum

MAX_DEFAULT_SEQ_LEN = 2048


@dataclass
class PerplexityResult:
    """``perplexity = exp(nll)``; ``nll`` is the mean negative log-likelihood per predicted token."""

    perplexity: float
    nll: float
    tokens: int          # predicted tokens
    seq_len: int         # window length in tokens, BOS included
    add_bos: bool
    windows: int
    bos_token_id: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(model: nn.Module, data: Union[torch.Tensor, Sequence[str]], seq_len: Optional[int] = None,
               batch_size: int = 8, add_bos: Optional[bool] = None, tokenizer=None,
               progress: bool = True, distributed="auto") -> PerplexityResult:
    """Perplexity of ``model`` on ``data``, over non-overlapping windows of ``seq_len`` tokens.

    Args:
        model: a causal LM (Hugging Face ``...ForCausalLM`` or any module mapping (B, T) ids to
            (B, T, V) logits). It runs under ``torch.no_grad()`` in eval mode; every submodule's
            mode is restored afterwards. Nothing else about it changes.
        data: a 1-D LongTensor (a tokenized corpus, concatenated), or a list of strings with
            ``tokenizer=``: each text is tokenized without special tokens and the texts are
            joined with the tokenizer's EOS token (a newline where it has none).
        seq_len: tokens per window, BOS included (default: the model's
            ``max_position_embeddings``/``n_positions``, at most 2048). The last partial window
            is kept when it has at least 2 tokens.
        batch_size: windows per forward pass.
        add_bos: prepend BOS to every window (then the window's first corpus token is
            predicted too). ``None``: when the tokenizer defines a BOS token and the model
            family expects one (LLaMA, Qwen2, Mistral, ...). The choice is in the result.
        tokenizer: needed for a list of strings; also the source of the BOS id.
        progress: a tqdm bar over the batches.
        distributed: ``"auto"``: under a process group of W > 1 ranks (torchrun), rank r runs
            window batches r, r + W, ... and the float64 NLL sums and token counts are summed
            over the ranks, so every rank returns the perplexity of the whole corpus for 1/W
            of the forward passes. ``False``: every window on every rank.

    Each window of ``n`` tokens predicts its tokens 2..n from the ones before;
    ``perplexity = exp(sum NLL / sum predicted tokens)`` over all windows, the sums in float64.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a causal LM), got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    ids = corpus_ids(data, tokenizer)
    bos = _bos_choice(model, tokenizer, add_bos)
    seq_len = _seq_len(model, seq_len)
    if bos is not None and seq_len < 2:
        raise ValueError("seq_len must be >= 2 with add_bos (the BOS token plus one predicted token)")
    windows = _windows(ids, seq_len, bos)
    if not windows:
        raise ValueError(f"data has {ids.numel()} token(s); perplexity needs at least 2 (or 1 with add_bos)")
    from ..distributed import resolve, sum_over_ranks

    shard = resolve(distributed)
    groups = _batches(windows, batch_size)
    if shard is not None:
        groups = groups[shard.rank::shard.world]
    try:
        total, count = _nll_sums(model, groups, progress)
    except Exception as e:  # noqa: BLE001 - joined below so the other ranks do not wait
        if shard is None:
            raise
        sum_over_ranks(shard, [0.0, 0.0], "perplexity", e)
    if shard is None:
        total = float(total)
    else:
        total, count = sum_over_ranks(shard, [float(total), count], "perplexity")
        count = int(count)
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count, seq_len, bos is not None, len(windows), bos)


def _nll_sums(model, groups, progress):
    """Float64 NLL sum and predicted-token count over the window batches ``groups``."""
    device = _device(model)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with _eval_mode(model), torch.no_grad(), _bar(len(groups), progress) as bar:
        for group in groups:
            x = torch.stack(group).to(device)
            logits = _logits(model, x)
            if logits.shape[:2] != x.shape:
                raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                                 "perplexity needs a causal LM giving (batch, tokens, vocab) logits")
            # Targets shifted left, the last position ignored: the logits stay a view (no
            # (B, T-1, V) copy), which keeps perplexity close to the cost of the forwards.
            target = torch.cat([x[:, 1:], x.new_full((x.shape[0], 1), -100)], dim=1)
            total += token_nll_sum(logits.flatten(0, 1), target.flatten())
            count += x.shape[0] * (x.shape[1] - 1)
            bar.update(1)
    return total, count


def _bos_choice(model, tokenizer, add_bos) -> Optional[int]:
    """The BOS id to prepend, or None."""
    tok_bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if add_bos is None:
        # Families trained with a BOS token at the start of every document (their adapter's
        # expects_bos): a window without one is out of distribution for them. GPT-2 and most
        # others never saw a BOS.
        traits = family_traits(model)
        return tok_bos if tok_bos is not None and traits is not None and traits.expects_bos else None
    if not add_bos:
        return None
    bos = tok_bos if tok_bos is not None else getattr(getattr(model, "config", None), "bos_token_id", None)
    if bos is None:
        raise ValueError("add_bos=True but neither the tokenizer nor model.config defines a BOS token id; "
                         "pass tokenizer= or add_bos=False")
    return int(bos)


def _seq_len(model, seq_len) -> int:
    if seq_len is None:
        config = getattr(model, "config", None)
        limit = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                      if isinstance(getattr(config, k, None), int)), None)
        if limit is None:
            raise ValueError("the model has no config.max_position_embeddings; pass seq_len=")
        return min(limit, MAX_DEFAULT_SEQ_LEN)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    return seq_len


def _windows(ids: torch.Tensor, seq_len: int, bos: Optional[int]) -> List[torch.Tensor]:
    """Non-overlapping windows of at most ``seq_len`` tokens (BOS included); a last one needs >= 2."""
    step = seq_len - (bos is not None)
    out = []
    for start in range(0, ids.numel(), step):
        w = ids[start:start + step]
        if bos is not None:
            w = torch.cat([w.new_tensor([bos]), w])
        if w.numel() >= 2:
            out.append(w)
    return out


def _batches(windows: List[torch.Tensor], batch_size: int) -> List[List[torch.Tensor]]:
    """Equal-length windows batched together (only the last window can be shorter): no padding."""
    full = [w for w in windows if w.numel() == windows[0].numel()]
    rest = [w for w in windows if w.numel() != windows[0].numel()]
    groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    return groups + [[w] for w in rest]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    config = getattr(model, "config", None)
    kwargs = {"use_cache": False} if config is not None and hasattr(config, "use_cache") else {}
    out = model(input_ids=x, **kwargs) if config is not None else model(x)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("the model's output has no (batch, tokens, vocab) logits; perplexity needs a causal LM")
    return logits


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def _bar(total: int, enabled: bool):
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="mpruner perplexity", unit="batch", leave=False)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

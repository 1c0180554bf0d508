"""Block choices by measured loss: the calibration loss with blocks skipped, no model copies.

A skipped block still runs, but a forward hook hands its input on as its output, so the model
computes exactly what it would with the block removed (the blocks of a decoder LM map hidden
states of one shape to the same shape), and nothing about the model changes: the hooks are
removed afterwards, also on errors.

- :func:`leave_one_out`: the loss increase of skipping each candidate alone (Shortened LLaMA's
  criterion, Kim et al. 2024, on calibration text).
- :func:`greedy`: SLEB (Song et al. 2024): skip the block whose removal raises the loss least,
  re-measure with it skipped, repeat.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..evaluation.loss import causal_lm_nll


def _pass_input_on(module, args, kwargs, output):
    hidden = kwargs.get("hidden_states") if kwargs else None
    if hidden is None:
        hidden = next(a for a in args if isinstance(a, torch.Tensor))
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    raise TypeError(f"a skipped {type(module).__name__} returned a {type(output).__name__}; the loss-driven choices "
                    "handle blocks that return their hidden states (a tensor, or a tuple starting with them)")


@contextlib.contextmanager
def skipping(blocks: Sequence[nn.Module]):
    """Within the block, each of ``blocks`` passes its input on unchanged (as if removed)."""
    handles = []
    try:
        for block in blocks:
            handles.append(block.register_forward_hook(_pass_input_on, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def mean_loss(model: nn.Module, batches: Iterable, skipped: Sequence[nn.Module] = ()) -> float:
    """Mean next-token loss over the real tokens of ``batches`` with ``skipped`` blocks skipped."""
    with skipping(skipped):
        total, count = causal_lm_nll(model, batches)
    if count == 0:
        raise ValueError("batches hold no token with a real next token to predict")
    return total / count


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pass", leave=False)


def leave_one_out(model: nn.Module, batches: List, blocks: Sequence[nn.Module], candidates: Sequence[int],
                  progress: bool = True) -> torch.Tensor:
    """(L,) float64: the calibration loss increase of skipping each candidate alone; +inf elsewhere."""
    scores = torch.full((len(blocks),), math.inf, dtype=torch.float64)
    with _modes_restored(model), _bar(len(candidates) + 1, "mpruner leave-one-out", progress) as bar:
        model.eval()
        base = mean_loss(model, batches)
        _tick(bar)
        for i in candidates:
            scores[i] = mean_loss(model, batches, [blocks[i]]) - base
            _tick(bar)
    return scores


def greedy(model: nn.Module, batches: List, blocks: Sequence[nn.Module], candidates: Sequence[int], n: int,
           progress: bool = True) -> Tuple[List[int], List[float]]:
    """SLEB's greedy order: ``n`` blocks, each the one whose removal (with the earlier ones
    removed) raises the calibration loss least; returns (the blocks in the order chosen, the
    loss after each round). Ties go to the later block, as deeper blocks are the usual
    redundant ones."""
    chosen: List[int] = []
    losses: List[float] = []
    left = list(candidates)
    passes = sum(len(left) - r for r in range(n))
    with _modes_restored(model), _bar(passes, "mpruner greedy", progress) as bar:
        model.eval()
        for _ in range(n):
            best: Optional[Tuple[float, int]] = None
            for i in left:
                loss = mean_loss(model, batches, [blocks[j] for j in chosen + [i]])
                _tick(bar)
                if best is None or loss < best[0] or (loss == best[0] and i > best[1]):
                    best = (loss, i)
            chosen.append(best[1])
            losses.append(best[0])
            left.remove(best[1])
    return chosen, losses


def _tick(bar) -> None:
    if bar is not None:
        bar.update(1)


@contextlib.contextmanager
def _modes_restored(model: nn.Module):
    saved = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training

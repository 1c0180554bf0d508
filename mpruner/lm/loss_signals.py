"""Block choices by measured loss: the calibration loss with blocks skipped, no model copies.

A skipped block hands its input on as its output, so the model computes exactly what it would
with the block removed (the blocks of a decoder LM map hidden states of one shape to the same
shape), and nothing about the model changes: every patch is undone afterwards, also on errors.

Each round first runs the model once with the blocks skipped so far and keeps every block's
output for every batch; a candidate ``i`` is then scored with the blocks before it replaying
those outputs instead of computing them (their inputs are the same), so scoring block ``i``
costs the blocks after it and the LM head: about half a forward pass on average, with the very
same numbers a full pass gives.

- :func:`leave_one_out`: the loss increase of skipping each candidate alone (Shortened LLaMA's
  criterion, Kim et al. 2024, on calibration text).
- :func:`greedy`: SLEB (Song et al. 2024): skip the block whose removal raises the loss least,
  re-measure with it skipped, repeat.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..evaluation.loss import causal_lm_nll


def _hidden_input(args, kwargs) -> torch.Tensor:
    hidden = kwargs.get("hidden_states") if kwargs else None
    if hidden is None:
        hidden = next(a for a in args if isinstance(a, torch.Tensor))
    return hidden


class _Replay:
    """Runs the calibration batches with some blocks skipped and some replayed."""

    def __init__(self, model: nn.Module, batches: List, blocks: Sequence[nn.Module]):
        self.model, self.batches, self.blocks = model, batches, list(blocks)
        self.outputs: Dict[int, List[object]] = {}  # block -> its output for every batch (last baseline)
        self.tails: Dict[int, tuple] = {}  # what a block returns after its hidden states, if it returns a tuple
        self.batch = 0

    def _pass_input_on(self, index: int):
        def forward(*args, **kwargs):
            hidden = _hidden_input(args, kwargs)
            tail = self.tails.get(index)
            return hidden if tail is None else (hidden,) + tail
        return forward

    def _record(self, index: int, output, skipped: Sequence[int]) -> None:
        self.outputs.setdefault(index, []).append(output)
        if index not in skipped and not isinstance(output, torch.Tensor) and index not in self.tails:
            self.tails[index] = tuple(output[1:])

    def _replayed(self, index: int):
        return lambda *args, **kwargs: self.outputs[index][self.batch]

    @contextlib.contextmanager
    def _patched(self, skipped: Sequence[int], replayed: Sequence[int], record: bool):
        patched, handles = [], []
        try:
            for i in skipped:
                self.blocks[i].forward = self._pass_input_on(i)
                patched.append(self.blocks[i])
            for i in replayed:
                self.blocks[i].forward = self._replayed(i)
                patched.append(self.blocks[i])
            if record:
                for i, block in enumerate(self.blocks):
                    handles.append(block.register_forward_hook(
                        lambda m, a, out, i=i: self._record(i, out, skipped)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for block in patched:
                vars(block).pop("forward", None)  # back to the class's forward

    def loss(self, skipped: Sequence[int], replay_before: Optional[int] = None, record: bool = False) -> float:
        """Mean next-token loss with ``skipped`` passing their input on; blocks before
        ``replay_before`` (not skipped) replay the outputs of the last ``record`` pass."""
        replayed = [] if replay_before is None else [i for i in range(replay_before) if i not in skipped]
        if record:
            self.outputs = {}
        with self._patched(skipped, replayed, record):
            total, count = 0.0, 0
            for self.batch, batch in enumerate(self.batches):
                t, c = causal_lm_nll(self.model, [batch])
                total, count = total + t, count + c
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
    run = _Replay(model, batches, blocks)
    with _modes_restored(model), _bar(len(candidates) + 1, "mpruner leave-one-out", progress) as bar:
        model.eval()
        base = run.loss([], record=True)
        _tick(bar)
        for i in candidates:
            scores[i] = run.loss([i], replay_before=i) - base
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
    run = _Replay(model, batches, blocks)
    passes = sum(len(left) - r + 1 for r in range(n))
    with _modes_restored(model), _bar(passes, "mpruner greedy", progress) as bar:
        model.eval()
        for _ in range(n):
            run.loss(chosen, record=True)  # this round's baseline: the outputs the candidates replay
            _tick(bar)
            best: Optional[Tuple[float, int]] = None
            for i in left:
                loss = run.loss(chosen + [i], replay_before=i)
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

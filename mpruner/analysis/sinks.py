"""Where captured batches go: the minibatch CKA accumulator, or per-sequence token CKA.

Both keep only fixed-size sums (L x L float64 and counters); nothing grows with the
number of batches.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from ..engine import checks
from ..engine import CKAAccumulator
from ..engine import token_cka
from ..engine.cka import NonFiniteError
from ..stacklevel import user_stacklevel
from .views import BatchContext


def _nonfinite_error(bad: Sequence[str], batch) -> ValueError:
    return ValueError(f"NaN or Inf in the output of {', '.join(map(repr, bad))} in batch {batch}; check the model "
                      "and that batch (e.g. float16 overflow, or uninitialised weights)")


def _rows(xs: Sequence[torch.Tensor], names: Sequence[str], ctx: BatchContext) -> int:
    n = xs[0].shape[0]
    for name, x in zip(names, xs):
        if x.shape[0] != n:
            raise ValueError(f"in batch {ctx.index}, layer {name!r} gives {x.shape[0]} samples but {names[0]!r} gives "
                             f"{n}; every analysed layer must keep the batch dimension first")
    return n


class MatrixSink:
    """Minibatch CKA (Nguyen et al. 2021) through ``CKAAccumulator``."""

    def __init__(self, kernel: str, unbiased: bool, names: Sequence[str], other_names: Sequence[str], device):
        self.names = list(names) + list(other_names)
        self.has_other = bool(other_names)
        self.need = checks.min_samples(unbiased)
        self.acc = CKAAccumulator(kernel=kernel, unbiased=unbiased, device=device, layer_names=self.names)
        self.skipped_batches = self.skipped_samples = 0

    def update(self, feats: List[torch.Tensor], other: Optional[List[torch.Tensor]], ctx: BatchContext) -> None:
        xs = feats + (other or [])
        n = _rows(xs, self.names, ctx)
        if n < self.need:  # too small for the estimator: skipped and counted (see analyze)
            self.skipped_batches += 1
            self.skipped_samples += n
            return
        # NaN/Inf: no pass over the activations here; the engine sees them in each
        # layer's self-HSIC (on GPUs at compute(), without a sync per batch).
        try:
            self.acc.update(feats, other if self.has_other else None, batch=ctx.index)
        except NonFiniteError as e:
            raise _nonfinite_error(e.layers, e.batch) from None

    @property
    def num_batches(self) -> int:
        return self.acc.num_batches

    def result(self) -> Tuple[torch.Tensor, int, dict]:
        if self.acc.num_batches == 0:
            raise ValueError(_no_batches(self.skipped_batches, self.need, "samples"))
        try:
            c = self.acc.compute()
        except NonFiniteError as e:
            raise _nonfinite_error(e.layers, e.batch) from None
        return c.cpu(), self.acc.num_samples, {"estimator": "minibatch"}


class TokenSink:
    """Per-sequence linear CKA (tokens as samples) averaged over all sequences."""

    def __init__(self, unbiased: bool, names: Sequence[str], other_names: Sequence[str], device):
        self.names, self.L = list(names) + list(other_names), len(names)
        self.has_other = bool(other_names)
        self.unbiased, self.need, self.device = unbiased, checks.min_samples(unbiased), device
        K = len(self.names)
        self.sum = torch.zeros(K, K, dtype=torch.float64, device=device)
        self.count = torch.zeros(K, K, dtype=torch.long, device=device)
        self.num_batches = self.sequences = self.tokens = 0
        self.skipped_batches = self.skipped_samples = 0
        self.constant = 0  # sequences on which some layer was constant

    def update(self, feats, other, ctx: BatchContext) -> None:
        pairs = feats + (other or [])
        xs = [x for x, _ in pairs]
        _rows(xs, self.names, ctx)
        for name, x in zip(self.names, xs):
            if x.shape[:2] != xs[0].shape[:2]:
                raise ValueError(f"view='tokens': in batch {ctx.index} layer {name!r} has (B, T)="
                                 f"{tuple(x.shape[:2])} but {self.names[0]!r} has {tuple(xs[0].shape[:2])}; "
                                 "per-sequence CKA needs the same tokens in every layer")
        mask = next((m for _, m in pairs if m is not None), None)
        B, T = xs[0].shape[:2]
        lengths = mask.sum(1).cpu() if mask is not None else torch.full((B,), T)
        keep = lengths >= self.need
        kept = int(keep.sum())
        self.skipped_samples += B - kept
        if kept == 0:
            self.skipped_batches += 1
            return
        xs = [x.to(self.device, non_blocking=True) for x in xs]
        if mask is not None:
            mask = mask.to(self.device)
        if kept < B:
            index = keep.nonzero().flatten().to(self.device)
            xs = [x.index_select(0, index) for x in xs]
            mask = None if mask is None else mask.index_select(0, index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant layers: summarised once in result()
            try:  # NaN/Inf in real tokens shows in the per-sequence self-HSIC (padding is never read)
                c = token_cka(xs, mask, unbiased=self.unbiased)
            except NonFiniteError as e:
                raise _nonfinite_error([self.names[i] for i in e.layers], ctx.index) from None
        finite = torch.isfinite(c)
        self.constant += int((~finite).flatten(1).any(1).sum())
        self.sum += torch.where(finite, c, 0).sum(0)
        self.count += finite.sum(0)
        self.num_batches += 1
        self.sequences += kept
        self.tokens += int(lengths[keep].sum())

    def result(self) -> Tuple[torch.Tensor, int, dict]:
        if self.num_batches == 0:
            raise ValueError(_no_batches(self.skipped_batches, self.need, "tokens in any sequence"))
        c = self.sum / self.count.clamp_min(1)
        c = torch.where(self.count > 0, c, torch.full_like(c, float("nan"))).cpu()
        if self.constant:
            warnings.warn(f"some layers were constant over the tokens of {self.constant} sequence(s); their CKA "
                          "there is undefined and those sequences are left out of the affected entries "
                          "(NaN where no sequence remains)", RuntimeWarning, stacklevel=user_stacklevel())
        if self.has_other:
            c = c[:self.L, self.L:]
        else:
            c = c[:self.L, :self.L]
        return c, self.sequences, {"estimator": "per-sequence", "num_tokens": self.tokens}


def _no_batches(skipped: int, need: int, what: str) -> str:
    if skipped:
        return (f"no batch could be used: all {skipped} had fewer than {need} {what}, which the estimator needs; "
                f"use larger batches (>= {need})" + (" or unbiased=False" if need == 4 else ""))
    return "data yielded no batches; pass an iterable with at least one batch"

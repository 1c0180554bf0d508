"""Where captured batches go for CKA: the minibatch accumulator, or per-sequence token CKA.

``analyze`` picks one sink per call (:func:`mpruner.analysis.driver.choose_sink`); every
sink takes ``update(outputs, inputs, other, ctx)`` for each batch and gives a
:class:`SinkResult` at the end, and offers its float64 sums to the all-reduce under
torchrun (``distributed_state`` / ``distributed_counts`` / ``distributed_load``: zeros of the
same sizes are a valid "nothing seen"). Sinks keep only fixed-size sums (L x L float64 and
counters); nothing grows with the number of batches.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..engine import checks
from ..engine import CKAAccumulator
from ..engine import token_cka
from ..engine.cka import NonFiniteError
from ..engine.precision import resolve as resolve_precision
from ..stacklevel import user_stacklevel
from .views import BatchContext


@dataclass
class SinkResult:
    """What a sink hands back to ``analyze``."""

    matrix: torch.Tensor                # (L, L) or (L, M) float64 on the CPU
    num_samples: int                    # samples (sequences for per-sequence CKA, tokens for token metrics)
    extra: Dict                         # options to record (estimator, token counts, ...)
    block_io: Optional[Dict[str, torch.Tensor]] = None  # block INPUT vs OUTPUT cosines/angles, when captured


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

    unit = "samples per batch"

    def __init__(self, kernel: str, unbiased: bool, names: Sequence[str], other_names: Sequence[str], device,
                 precision: str = "highest"):
        self.names = list(names) + list(other_names)
        self.has_other = bool(other_names)
        self.shape = (len(names), len(other_names))
        self.unbiased, self.need = unbiased, checks.min_samples(unbiased)
        self.acc = CKAAccumulator(kernel=kernel, unbiased=unbiased, device=device, layer_names=self.names,
                                  precision=precision)
        self.skipped_batches = self.skipped_samples = 0

    def update(self, feats: List[torch.Tensor], inputs, other: Optional[List[torch.Tensor]],
               ctx: BatchContext) -> None:
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

    def result(self) -> SinkResult:
        if self.acc.num_batches == 0:
            raise ValueError(_no_batches(self.skipped_batches, self.need, "samples"))
        try:
            c = self.acc.compute()
        except NonFiniteError as e:
            raise _nonfinite_error(e.layers, e.batch) from None
        _warn_skipped(self, "samples")
        return SinkResult(c.cpu(), self.acc.num_samples, {"estimator": "minibatch"})

    # torch.distributed: the accumulator's float64 sums and thresholds, and the counters.
    def distributed_state(self) -> List[torch.Tensor]:
        K = len(self.names)
        if not self.acc.num_batches:  # this rank's share was empty or all skipped: it adds nothing
            return [torch.zeros(K * K + K, dtype=torch.float64)]
        state = self.acc.state_dict()
        return [torch.cat([state["hsic"].flatten().double().cpu(), state["thresholds"].double().cpu()])]

    def distributed_counts(self) -> List[int]:
        acc = self.acc
        return [acc.num_batches, acc.num_samples, acc.num_skipped, self.skipped_batches, self.skipped_samples]

    def distributed_load(self, tensors: List[torch.Tensor], counts: List[int]) -> None:
        acc, K, flat = self.acc, len(self.names), tensors[0]
        num_batches, num_samples, num_skipped, self.skipped_batches, self.skipped_samples = counts
        state = {"kernel": acc.kernel, "unbiased": acc.unbiased, "sigma": acc.sigma, "estimator": acc.estimator,
                 "shape": list(self.shape) if num_batches else None, "num_batches": num_batches,
                 "num_samples": num_samples, "num_skipped": num_skipped,
                 "hsic": flat[:K * K].reshape(K, K), "thresholds": flat[K * K:]}
        acc.load_state_dict(state)


class TokenSink:
    """Per-sequence linear CKA (tokens as samples) averaged over all sequences."""

    unit = "tokens per sequence"

    def __init__(self, unbiased: bool, names: Sequence[str], other_names: Sequence[str], device,
                 precision: str = "highest"):
        self.names, self.L = list(names) + list(other_names), len(names)
        self.has_other = bool(other_names)
        self.shape = (len(names), len(other_names))
        # Resolved once here: a fallback warns once, not per batch (token_cka's warnings
        # are filtered per batch below).
        self.precision = resolve_precision(precision, torch.device(device))
        self.unbiased, self.need, self.device = unbiased, checks.min_samples(unbiased), device
        K = len(self.names)
        self.sum = torch.zeros(K, K, dtype=torch.float64, device=device)
        self.count = torch.zeros(K, K, dtype=torch.long, device=device)
        self.num_batches = self.sequences = self.tokens = 0
        self.skipped_batches = self.skipped_samples = 0
        self.constant = 0  # sequences on which some layer was constant

    def update(self, feats, inputs, other, ctx: BatchContext) -> None:
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
                c = token_cka(xs, mask, unbiased=self.unbiased, precision=self.precision)
            except NonFiniteError as e:
                raise _nonfinite_error([self.names[i] for i in e.layers], ctx.index) from None
        finite = torch.isfinite(c)
        self.constant += int((~finite).flatten(1).any(1).sum())
        self.sum += torch.where(finite, c, 0).sum(0)
        self.count += finite.sum(0)
        self.num_batches += 1
        self.sequences += kept
        self.tokens += int(lengths[keep].sum())

    def result(self) -> SinkResult:
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
        _warn_skipped(self, "sequences")
        return SinkResult(c, self.sequences, {"estimator": "per-sequence", "num_tokens": self.tokens})

    # torch.distributed: the per-pair sums and counts of sequences, and the counters.
    def distributed_state(self) -> List[torch.Tensor]:
        return [torch.cat([self.sum.flatten().double().cpu(), self.count.flatten().double().cpu()])]

    def distributed_counts(self) -> List[int]:
        return [self.num_batches, self.sequences, self.tokens, self.skipped_batches, self.skipped_samples,
                self.constant]

    def distributed_load(self, tensors: List[torch.Tensor], counts: List[int]) -> None:
        K, flat = len(self.names), tensors[0]
        self.sum = flat[:K * K].reshape(K, K).to(self.sum.device)
        self.count = flat[K * K:].round().long().reshape(K, K).to(self.count.device)
        (self.num_batches, self.sequences, self.tokens, self.skipped_batches, self.skipped_samples,
         self.constant) = counts


def _warn_skipped(sink, unit: str) -> None:
    """One warning for the batches too small for the estimator (they were skipped and counted)."""
    if sink.skipped_batches:
        warnings.warn(f"skipped {sink.skipped_batches} batch(es) / {sink.skipped_samples} {unit} too small for the "
                      f"{'unbiased' if sink.unbiased else 'biased'} estimator (it needs >= {sink.need} "
                      f"{sink.unit}); see Analysis.num_skipped", RuntimeWarning, stacklevel=user_stacklevel())


def _no_batches(skipped: int, need: int, what: str) -> str:
    if skipped:
        return (f"no batch could be used: all {skipped} had fewer than {need} {what}, which the estimator needs; "
                f"use larger batches (>= {need})" + (" or unbiased=False" if need == 4 else ""))
    return "data yielded no batches; pass an iterable with at least one batch"

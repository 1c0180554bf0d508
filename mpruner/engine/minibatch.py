"""The minibatch estimator of ``CKAAccumulator``: per-batch HSIC of every layer pair, summed.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021) sums each batch's (L, L) HSIC matrix and
normalises once at the end, so sums from several accumulators, processes or machines add up
to the same answer. On a device (GPU) the NaN/Inf checks never wait for it: a flag records
the first bad batch per layer (``nan_policy="raise"``, raised at the next read), or a bad
batch adds zeros and is counted there (``nan_policy="skip"``, counted when the host reads).

The sibling estimator, exact full-data linear CKA, is :class:`mpruner.engine.exact.ExactSums`;
both offer the methods the accumulator calls, so it chooses one once and never branches.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import checks
from .cka import check_finite, nonfinite_error, shifted_layer_hsic


class MinibatchSums:
    """Float64 sums of the per-batch HSIC matrices (and of the degeneracy thresholds)."""

    pools_samples = False  # every batch is an estimate of its own: the unbiased one needs n >= 4 per batch

    def __init__(self, kernel: str, unbiased: bool, sigma: float, precision: str, nan_policy: str, max_bytes: int):
        self.kernel, self.unbiased, self.sigma, self.precision = kernel, unbiased, sigma, precision
        self.nan_policy = nan_policy
        self.sums: Optional[torch.Tensor] = None        # (K, K) float64, K = L + M
        self.thresholds: Optional[torch.Tensor] = None  # (K,) summed like the HSIC
        self.first_bad: Optional[torch.Tensor] = None   # (K,) first batch with NaN/Inf per layer, -1: none
        self.pending: Optional[torch.Tensor] = None     # (skipped batches, their samples) counted on the device
        # The column means of the last batch (flat float64), kept in the state; the Grams
        # themselves are shifted by each batch's own first row (see update).
        self.shift: Optional[torch.Tensor] = None

    @property
    def device(self) -> Optional[torch.device]:
        return None if self.sums is None else self.sums.device

    def update(self, xs: List[torch.Tensor], names: Sequence[str], index: int) -> bool:
        """Adds one batch; False when it was skipped on the host (``nan_policy="skip"``)."""
        # Each batch is shifted by its own first row: a shift from earlier batches would make a
        # batch's float32 Grams depend on which batches came before, so ranks of a sharded run
        # (or a resumed one) would differ from one process in the last bits.
        shift = None
        h, thr, next_shift = shifted_layer_hsic(xs, self.kernel, self.unbiased, self.sigma, self.precision, shift)
        on_device = checks.device_path(h.device) and not checks.compiling()
        if on_device and self.nan_policy == "raise":
            bad = ~torch.isfinite(torch.diagonal(h))
            if self.first_bad is None:
                self.first_bad = torch.full(bad.shape, -1, dtype=torch.long, device=h.device)
            self.first_bad = torch.where(bad & (self.first_bad < 0), index, self.first_bad)
        elif on_device and self.nan_policy == "skip":
            # Masked accumulation: a batch with NaN/Inf anywhere adds zeros, and the device
            # counts it; the host learns of it when a counter or the result is read.
            skip = (~torch.isfinite(torch.diagonal(h))).any()
            zero = torch.zeros((), dtype=h.dtype, device=h.device)
            h, thr = torch.where(skip, zero, h), torch.where(skip, zero, thr)
            counts = torch.stack([skip, skip]).to(torch.long) * torch.tensor([1, xs[0].shape[0]], device=h.device)
            self.pending = counts if self.pending is None else self.pending + counts
            if shift is not None:  # a skipped batch leaves the shift as it was, too
                next_shift = torch.where(skip, shift, next_shift)
        else:
            bad = check_finite(h)
            if bad:
                if self.nan_policy == "skip":
                    return False  # the shift stays as it was
                raise nonfinite_error(bad, names, f" (batch {index})", index)
        self.shift = next_shift
        if self.sums is None:
            self.sums, self.thresholds = h.clone(), thr.clone()
        else:
            self.sums += h
            self.thresholds += thr
        return True

    def take_device_skips(self) -> Tuple[int, int]:
        """(batches, samples) skipped on the device since the last call (one device->host read)."""
        if self.pending is None:
            return 0, 0
        skipped, samples = (int(v) for v in self.pending.tolist())
        self.pending = None
        return skipped, samples

    def raise_deferred(self, names: Sequence[str]) -> None:
        """Raises for the NaN/Inf batches recorded on the device (one read)."""
        if self.first_bad is None:
            return
        first = self.first_bad.tolist()
        bad = [i for i, b in enumerate(first) if b >= 0]
        if bad:
            index = min(first[i] for i in bad)
            bad = [i for i in bad if first[i] == index]
            raise nonfinite_error(bad, names, f" (batch {index})", index)

    def hsic(self) -> torch.Tensor:
        return self.sums

    def result(self, num_samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(HSIC sums, degeneracy thresholds) for ``hsic_to_cka``."""
        return self.sums, self.thresholds

    def merge(self, other: "MinibatchSums") -> None:
        self.sums += other.sums.to(self.sums.device)
        self.thresholds += other.thresholds.to(self.thresholds.device)

    def all_reduce(self, group=None) -> None:
        import torch.distributed as dist

        for t in (self.sums, self.thresholds):
            dist.all_reduce(t, group=group)

    def total_samples(self, n: int) -> None:
        """The samples over all ranks after an all-reduce (the sums need no count)."""

    def state_dict(self) -> Dict:
        state = {"hsic": self.sums.clone(), "thresholds": self.thresholds.clone()}
        if self.shift is not None:  # so that a resumed accumulator forms the same Grams
            state["shift"] = self.shift.clone()
        return state

    def load_state_dict(self, state: Dict, device, max_bytes: int) -> None:
        self.sums = state["hsic"].to(device or state["hsic"].device, torch.float64).clone()
        self.thresholds = state["thresholds"].to(self.sums.device, torch.float64).clone()
        shift = state.get("shift")
        self.shift = None if shift is None else shift.to(self.sums.device, torch.float64).clone()

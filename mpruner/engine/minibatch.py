"""The minibatch estimator of ``CKAAccumulator``: per-batch HSIC of every layer pair, summed.

Minibatch CKA (Nguyen, Raghu & Kornblith 2021) sums each batch's (L, L) HSIC matrix and
normalises once at the end, so sums from several accumulators, processes or machines add up
to the same answer. On a device (GPU) the NaN/Inf checks never wait for it: a flag records
the first bad batch per layer (``nan_policy="raise"``, raised at the next read), or a bad
batch adds zeros and is counted there (``nan_policy="skip"``, counted when the host reads).
The device path updates its state in place only, so that ``cuda_graph=True`` can replay it
from a CUDA graph (mpruner/engine/graphed.py); ``MPRUNER_FUSED_EPILOGUE=1`` does everything
after the HSIC pass in one kernel (``_hsic_finish``). Each batch's features are shifted by
that batch's own first row before its Grams (``shifted_grams``), so a batch's sums do not
depend on the batches before it: sharded and resumed runs equal one process exactly.

The sibling estimator, exact full-data linear CKA, is :class:`mpruner.engine.exact.ExactSums`;
both offer the methods the accumulator calls, so it chooses one once and never branches.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import checks
from .cka import check_finite, degeneracy_scale, layer_hsic, nonfinite_error, shifted_grams
from .graphed import CapturedUpdates
from .ops import ops


class MinibatchSums:
    """Float64 sums of the per-batch HSIC matrices (and of the degeneracy thresholds)."""

    pools_samples = False  # every batch is an estimate of its own: the unbiased one needs n >= 4 per batch

    def __init__(self, kernel: str, unbiased: bool, sigma: float, precision: str, nan_policy: str, max_bytes: int,
                 cuda_graph: bool = False):
        self.kernel, self.unbiased, self.sigma, self.precision = kernel, unbiased, sigma, precision
        self.nan_policy = nan_policy
        self.sums: Optional[torch.Tensor] = None        # (K, K) float64, K = L + M
        self.thresholds: Optional[torch.Tensor] = None  # (K,) summed like the HSIC
        # Device path: (K + 2,) int64, the first batch with NaN/Inf per layer (-1: none), then the
        # batches skipped on the device and their samples. Updated in place only (a CUDA graph
        # replays into these very tensors).
        self.flags: Optional[torch.Tensor] = None
        self.fused = checks.fused_epilogue()
        self.graphs = CapturedUpdates(self) if cuda_graph else None

    @property
    def device(self) -> Optional[torch.device]:
        return None if self.sums is None else self.sums.device

    def update(self, xs: List[torch.Tensor], names: Sequence[str], index: int) -> bool:
        """Adds one batch; False when it was skipped on the host (``nan_policy="skip"``)."""
        if checks.device_path(xs[0].device) and not checks.compiling():
            if self.graphs is None or not self.graphs.update(xs, names, index):
                self.device_update(xs, names, index)
            return True
        h, thr = layer_hsic(xs, self.kernel, self.unbiased, self.sigma, self.precision)
        bad = check_finite(h)
        if bad:
            if self.nan_policy == "skip":
                return False
            raise nonfinite_error(bad, names, f" (batch {index})", index)
        if self.sums is None:
            self.sums, self.thresholds = h.clone(), thr.clone()
        else:
            self.sums += h
            self.thresholds += thr
        return True

    def _allocate(self, K: int, device) -> None:
        self.sums = torch.zeros((K, K), dtype=torch.float64, device=device)
        self.thresholds = torch.zeros(K, dtype=torch.float64, device=device)
        self.flags = torch.cat([torch.full((K,), -1, dtype=torch.long, device=device),
                                torch.zeros(2, dtype=torch.long, device=device)])

    def device_update(self, xs: List[torch.Tensor], names: Sequence[str], index) -> None:
        """The device path of ``update`` (``index``: an int, or a 0-d int64 tensor on the device).

        Never waits for the device: NaN/Inf are recorded in ``flags`` (``nan_policy="raise"``:
        the first bad batch per layer, raised at the next read), or such a batch adds zeros and
        is counted there (``"skip"``: the host learns of it when a counter is read)."""
        K = len(xs)
        if self.sums is None:
            self._allocate(K, xs[0].device)
        skip = self.nan_policy == "skip"
        if self.fused:  # one kernel after the HSIC pass (MPRUNER_FUSED_EPILOGUE=1)
            grams, _ = shifted_grams(xs, self.kernel, self.sigma, self.precision)
            g = grams if grams.dtype == torch.float64 else grams.float()
            pairs, rowsums = ops._hsic_partials(g.unsqueeze(1), None, self.unbiased)
            scale, factor = degeneracy_scale(xs, self.kernel, grams.dtype)
            if not isinstance(index, torch.Tensor):
                index = torch.full((), index, dtype=torch.long, device=xs[0].device)
            ops._hsic_finish(pairs[0], rowsums[0], xs[0].shape[0], self.unbiased, scale, factor, index, skip,
                             self.sums, self.thresholds, self.flags)
            return
        h, thr = layer_hsic(xs, self.kernel, self.unbiased, self.sigma, self.precision)
        bad = ~torch.isfinite(torch.diagonal(h))
        if skip:
            # Masked accumulation: a batch with NaN/Inf anywhere adds zeros, and the device counts it.
            hit = bad.any()
            zero = torch.zeros((), dtype=h.dtype, device=h.device)
            h, thr = torch.where(hit, zero, h), torch.where(hit, zero, thr)
            hit = hit.to(torch.long)  # no host tensor copied over: nothing to wait for or to capture
            self.flags[K:] += torch.stack([hit, hit * xs[0].shape[0]])
        else:
            first = self.flags[:K]
            first.copy_(torch.where(bad & (first < 0), index, first))
        self.sums += h
        self.thresholds += thr

    def take_device_skips(self) -> Tuple[int, int]:
        """(batches, samples) skipped on the device since the last call (one device->host read)."""
        if self.flags is None or self.nan_policy != "skip":
            return 0, 0
        K = self.flags.shape[0] - 2
        skipped, samples = (int(v) for v in self.flags[K:].tolist())
        if skipped:
            self.flags[K:].zero_()
        return skipped, samples

    def raise_deferred(self, names: Sequence[str]) -> None:
        """Raises for the NaN/Inf batches recorded on the device (one read)."""
        if self.flags is None or self.nan_policy != "raise":
            return
        first = self.flags[:-2].tolist()
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
        return {"hsic": self.sums.clone(), "thresholds": self.thresholds.clone()}

    def load_state_dict(self, state: Dict, device, max_bytes: int) -> None:
        self.sums = state["hsic"].to(device or state["hsic"].device, torch.float64).clone()
        self.thresholds = state["thresholds"].to(self.sums.device, torch.float64).clone()
        self.flags = None
        if self.graphs is not None:
            self.graphs.clear()  # they replay into the tensors just replaced

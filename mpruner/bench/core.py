"""What a benchmarked method is, what it is given and what it returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from .workloads import Workload, make_source


@dataclass
class Result:
    """A method's output on a subset of the work.

    ``cka``: (L, L), or (len(seq_ids), L, L) for per-sequence methods; None for the floor.
    ``pairs``: when only these (i, j) entries were computed (the rest is ignored).
    ``fixed_s``: seconds of the run that do not scale with the number of units (used
    when a slow method is timed on a subset and extrapolated).
    """

    cka: Optional[torch.Tensor] = None
    seq_ids: Optional[List[int]] = None
    pairs: Optional[List[Tuple[int, int]]] = None
    fixed_s: float = 0.0
    note: str = ""


@dataclass
class Method:
    """A row of the benchmark.

    ``unit``: what a subset is made of when the method is too slow for its time budget:
    "batches" (minibatches, or groups of sequences), "sequences" or "pairs" (i <= j).
    ``estimator``: key of ``refs.ESTIMATORS``, what the method computes.
    """

    name: str
    group: str                      # "mpruner", "baseline", "floor" or "peer"
    estimator: str
    unit: str
    kinds: Tuple[str, ...]
    run: Callable[["Ctx", List[int]], Result]
    notes: str = ""
    peer: Optional[str] = None      # PyPI distribution, for peers
    cpu_only: bool = False          # computes on the CPU whatever the device (says so in the row)
    precision: str = "highest"      # mpruner's GEMM mode for this row (mpruner bench --precision)


class Ctx:
    """Everything a method needs: the workload, the device, the activation source."""

    def __init__(self, wl: Workload, device, cache: bool = True):
        self.wl = wl
        self.device = torch.device(device)
        self.source = make_source(wl, self.device, cache=cache) if wl.kind == "minibatch" else \
            make_source(wl, self.device)
        self.pairs: List[Tuple[int, int]] = [(i, j) for i in range(wl.L) for j in range(i, wl.L)]
        self.layer_names = [f"layers.{l}" for l in range(wl.L)]

    def all_units(self, unit: str) -> List[int]:
        if unit == "batches":
            return list(range(self.wl.num_batches))
        if unit == "sequences":
            return list(range(self.wl.B))
        if unit == "pairs":
            return list(range(len(self.pairs)))
        raise ValueError(unit)

    def seq_ids(self, batches: List[int]) -> List[int]:
        return [b for j in batches for b in self.source.batches[j]]

    def hold(self):
        """Generates every batch (and sequence) now and replays them from memory: for small
        workloads timed in-process, where generation cannot be subtracted."""
        src = self.source
        batches = [src.batch(j) for j in range(self.wl.num_batches)]
        src.batch = lambda j: batches[j]
        if self.wl.kind == "tokens":
            seqs = [src.sequence(b) for b in range(self.wl.B)]
            src.sequence = lambda b: seqs[b]
        return self

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def sample_units(ctx: Ctx, unit: str, k: int) -> List[int]:
    """k units spread over the work: the first k batches; k pairs evenly spaced over the
    triangle; k sequences evenly spaced over the length order (the longest included)."""
    allu = ctx.all_units(unit)
    k = max(1, min(k, len(allu)))
    if k == len(allu):
        return allu
    if unit == "batches":
        return allu[:k]
    if unit == "sequences":
        order = sorted(allu, key=lambda b: ctx.source.lengths[b])
    else:  # pairs: off-diagonal ones first (CKA(x, x) = 1 says little about accuracy)
        off = [p for p in allu if ctx.pairs[p][0] != ctx.pairs[p][1]]
        order = off if k <= len(off) else allu
    idx = sorted({round(i * (len(order) - 1) / max(1, k - 1)) for i in range(k)}) if k > 1 else [len(order) - 1]
    return sorted(order[i] for i in idx)


"""``analyze`` over several processes (torchrun): one all-reduce (a SUM) of each sink's float64
sufficient statistics gives every rank the single-process result.

The minibatch HSIC and the per-sequence CKA sums are additive over batches, so the summed
state equals one process's to float64 rounding (about 1e-16). Which batches a rank takes
is :class:`mpruner.distributed.Shard`'s rule. A rank that raised during its batches still
joins the final all-reduce with a failure flag, so the others stop with an error instead
of waiting; a rank that died or hangs makes the others fail after the process group's
timeout (``init_process_group(timeout=...)``; torch defaults to 30 minutes for gloo, 10 for
NCCL).

Every sink takes part through three methods: ``distributed_state() -> [float64 tensors]``
(its sums; zeros of the same sizes must be a valid "nothing seen"),
``distributed_counts() -> [numbers]`` and ``distributed_load(tensors, counts)``, which
stores the summed values back.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..distributed import Shard, flagged_sum


def reduce_sink(shard: Shard, sink, seen: int, failure: Optional[BaseException] = None) -> int:
    """Sums ``sink``'s state over all ranks in one all-reduce; returns the batches seen by all ranks.

    Every rank calls it, also one whose loop raised (``failure``): it sends zeros and a
    failure flag, then re-raises its own error; the others raise a RuntimeError saying so.
    """
    if not all(hasattr(sink, m) for m in ("distributed_state", "distributed_counts", "distributed_load")):
        raise TypeError(f"{type(sink).__name__} cannot be summed over processes: give it distributed_state, "
                        "distributed_counts and distributed_load (see mpruner/analysis/reduction.py), or pass "
                        "distributed=False")
    if failure is None:
        tensors, counts = sink.distributed_state(), [float(c) for c in sink.distributed_counts()]
    else:  # the sink may be half-updated: send zeros of the right size
        tensors = [torch.zeros_like(t) for t in sink.distributed_state()]
        counts = [0.0] * len(sink.distributed_counts())
    sizes = [t.numel() for t in tensors]
    flat = torch.cat([torch.tensor([float(seen)] + counts, dtype=torch.float64)] + [t.flatten() for t in tensors])
    flat = flagged_sum(shard, flat, failure, "analyze failed on {failed} of {world} ranks (their error is in their "
                        "own output); this rank's share finished, but no result is returned")
    head = 1 + len(counts)
    total_seen, summed = int(flat[0].item()), [int(round(v)) for v in flat[1:head].tolist()]
    parts, offset = [], head
    for t, size in zip(tensors, sizes):
        parts.append(flat[offset:offset + size].reshape(t.shape))
        offset += size
    sink.distributed_load(parts, summed)
    return total_seen

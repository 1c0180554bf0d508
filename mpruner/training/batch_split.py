"""One global batch shared by the ranks of a data-parallel fine-tuning step.

Every rank reads the same batches; rank r trains on its contiguous part of each batch
(sizes differ by at most one sample). Its loss is weighted by ``n_r * W / B`` so that the
data-parallel mean of the ranks' gradients is the gradient of the mean loss over all B
samples, i.e. one process on the whole batch (for losses that are means over samples, as
cross-entropy is). A rank whose part would be empty (B < W) runs one sample with weight 0,
so that every rank takes part in each gradient all-reduce.
"""
from __future__ import annotations

from typing import Tuple


def split_batch(batch, rank: int, world: int) -> Tuple[object, float]:
    """``(rank r's part of batch, its loss weight)``; the whole batch and 1.0 for one rank."""
    if world == 1:
        return batch, 1.0
    from accelerate.utils import find_batch_size, slice_tensors

    try:
        size = find_batch_size(batch)
    except (TypeError, ValueError) as e:
        raise TypeError(f"data-parallel fine-tuning splits every batch over the {world} ranks, but cannot find the "
                        f"batch size of a {type(batch).__name__} ({e}); use tensors, or dicts/tuples of tensors, "
                        "with the samples first") from None
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    if count == 0:
        return slice_tensors(batch, slice(0, 1)), 0.0
    return slice_tensors(batch, slice(start, start + count)), count * world / size

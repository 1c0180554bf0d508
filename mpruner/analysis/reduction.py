"""``analyze`` over several processes (torchrun): one all-reduce (a SUM) of each sink's float64
sufficient statistics gives every rank the single-process result.

The minibatch HSIC and the per-sequence CKA sums are additive over batches, so the summed
state equals one process's to float64 rounding (about 1e-16). Which batches a rank takes
is :class:`mpruner.distributed.Shard`'s rule. A rank that raised during its batches still
joins the final all-reduce with a failure flag, so the others stop with an error instead
of waiting; a rank that died or hangs makes the others fail after the process group's
timeout (``init_process_group(timeout=...)``; torch defaults to 30 minutes for gloo, 10 for
NCCL).

A sink other than MatrixSink / TokenSink takes part by defining three methods:
``distributed_state(shape) -> [float64 tensors]`` (its sums; zeros of the same sizes must be
a valid "nothing seen"), ``distributed_counts() -> [numbers]`` and
``distributed_load(shape, tensors, counts)``, which stores the summed values back.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..distributed import Shard, flagged_sum

# ---------------------------------------------------------------- the reduction
def _matrix_state(sink, shape) -> List[torch.Tensor]:
    acc = sink.acc  # analyze's CKA sink always streams the minibatch estimator
    K = sum(shape)
    if not acc.num_batches:  # this rank's share was empty or all skipped: it adds nothing
        return [torch.zeros(K * K + K, dtype=torch.float64)]
    state = acc.state_dict()
    return [torch.cat([state["hsic"].flatten().double().cpu(), state["thresholds"].double().cpu()])]


def _matrix_counts(sink) -> List[float]:
    acc = sink.acc
    return [acc.num_batches, acc.num_samples, acc.num_skipped, sink.skipped_batches, sink.skipped_samples]


def _matrix_load(sink, shape, tensors: List[torch.Tensor], counts: List[int]) -> None:
    acc = sink.acc
    K = sum(shape)
    flat = tensors[0]
    num_batches, num_samples, num_skipped, sink.skipped_batches, sink.skipped_samples = counts
    state = {"kernel": acc.kernel, "unbiased": acc.unbiased, "sigma": acc.sigma, "estimator": acc.estimator,
             "shape": list(shape) if num_batches else None, "num_batches": num_batches,
             "num_samples": num_samples, "num_skipped": num_skipped,
             "hsic": flat[:K * K].reshape(K, K), "thresholds": flat[K * K:]}
    acc.load_state_dict(state)


def _token_state(sink, shape) -> List[torch.Tensor]:
    return [torch.cat([sink.sum.flatten().double().cpu(), sink.count.flatten().double().cpu()])]


def _token_counts(sink) -> List[float]:
    return [sink.num_batches, sink.sequences, sink.tokens, sink.skipped_batches, sink.skipped_samples,
            sink.constant]


def _token_load(sink, shape, tensors: List[torch.Tensor], counts: List[int]) -> None:
    K = sum(shape)
    flat = tensors[0]
    sink.sum = flat[:K * K].reshape(K, K).to(sink.sum.device)
    sink.count = flat[K * K:].round().long().reshape(K, K).to(sink.count.device)
    (sink.num_batches, sink.sequences, sink.tokens, sink.skipped_batches, sink.skipped_samples,
     sink.constant) = counts


def _handlers(sink):
    from .sinks import MatrixSink, TokenSink

    if isinstance(sink, MatrixSink):
        return _matrix_state, _matrix_counts, _matrix_load
    if isinstance(sink, TokenSink):
        return _token_state, _token_counts, _token_load
    # Other sinks take part by offering the same three steps themselves.
    if all(hasattr(sink, m) for m in ("distributed_state", "distributed_counts", "distributed_load")):
        return (type(sink).distributed_state, type(sink).distributed_counts, type(sink).distributed_load)
    raise TypeError(f"{type(sink).__name__} cannot be summed over processes: give it distributed_state, "
                    "distributed_counts and distributed_load (see mpruner/analysis/reduction.py), or pass "
                    "distributed=False")


def reduce_sink(shard: Shard, sink, shape, seen: int, failure: Optional[BaseException] = None) -> int:
    """Sums ``sink``'s state over all ranks in one all-reduce; returns the batches seen by all ranks.

    Every rank calls it, also one whose loop raised (``failure``): it sends zeros and a
    failure flag, then re-raises its own error; the others raise a RuntimeError saying so.
    """
    state_fn, counts_fn, load_fn = _handlers(sink)
    if failure is None:
        tensors, counts = state_fn(sink, shape), [float(c) for c in counts_fn(sink)]
    else:  # the sink may be half-updated: send zeros of the right size
        tensors = [torch.zeros_like(t) for t in state_fn(sink, shape)]
        counts = [0.0] * len(counts_fn(sink))
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
    load_fn(sink, shape, parts, summed)
    return total_seen

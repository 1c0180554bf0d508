"""Top-1 accuracy of a classifier over labelled batches, sharded over ranks under torchrun."""
from __future__ import annotations

import torch
import torch.nn as nn


def accuracy(model: nn.Module, batches, distributed="auto") -> float:
    """Top-1 accuracy over ``(inputs, labels)`` or HF dict batches with ``labels``.

    ``distributed="auto"``: under a process group of W > 1 ranks (torchrun), rank r scores
    batches r, r + W, ... and the correct/total counts are summed over the ranks, so every
    rank returns the accuracy over all batches (the same number one process gets) for 1/W of
    the forward passes. ``False``: every batch on every rank.
    """
    from ..distributed import resolve, sum_over_ranks

    shard = resolve(distributed)
    was = model.training
    model.eval()
    correct = total = 0
    failure = None
    try:
        with torch.no_grad():
            for b in (batches if shard is None else shard.take(batches)):
                if isinstance(b, dict):
                    labels = b["labels"]
                    logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
                else:
                    logits, labels = model(b[0]), b[1]
                    logits = getattr(logits, "logits", logits)
                correct += (logits.argmax(-1) == labels).sum().item()
                total += len(labels)
    except Exception as e:  # noqa: BLE001 - joined below so the other ranks do not wait
        if shard is None:
            raise
        failure = e
    finally:
        model.train(was)
    if shard is not None:
        correct, total = sum_over_ranks(shard, [correct, total], "evaluation", failure)
    return correct / max(1, total)

"""Clusters of consecutive similar layers, and which of their members to remove."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from ..moved import forward_names

METHODS = ("anchor", "adjacent")


def _as_matrix(cka) -> torch.Tensor:
    m = torch.as_tensor(cka, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cka must be a square (L, L) matrix, got shape {tuple(m.shape)}")
    return m


def cluster_layers(cka, threshold: float = 0.98, method: str = "anchor") -> List[List[int]]:
    """Splits layers 0..L-1 into runs of consecutive, similar layers.

    ``anchor`` (MPruner's rule): a cluster starts at an anchor layer and grows while
    CKA(anchor, next) >= threshold; the first layer below starts a new cluster.
    ``adjacent``: grows while CKA(previous, next) >= threshold (chains of neighbours).
    NaN similarities (constant layers) never join a cluster.

    Returns every layer exactly once, in order, e.g. ``[[0], [1, 2, 3], [4]]``.
    """
    m = _as_matrix(cka)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    L = m.shape[0]
    clusters: List[List[int]] = []
    for i in range(L):
        if clusters:
            ref = clusters[-1][0] if method == "anchor" else clusters[-1][-1]
            sim = float(m[ref, i])
            if not math.isnan(sim) and sim >= threshold:
                clusters[-1].append(i)
                continue
        clusters.append([i])
    return clusters


def redundant_members(clusters: Sequence[Sequence[int]], granularity: int = 1) -> List[int]:
    """Indices to remove: ``cluster[1::granularity]`` of every cluster (its anchor stays).

    Granularity 1 keeps only each cluster's first layer; larger values keep more
    (a finer step after a rejected attempt).
    """
    if not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be an integer >= 1, got {granularity!r}")
    out: List[int] = []
    for c in clusters:
        out.extend(list(c)[1::granularity])
    return sorted(out)


def adjacent_similarities(cka) -> List[float]:
    """CKA(l, l+1) for l = 0..L-2."""
    m = _as_matrix(cka)
    return [float(m[i, i + 1]) for i in range(m.shape[0] - 1)]


def auto_threshold(cka, floor: float = 0.9, step: float = 0.005, exclude=()) -> float:
    """A threshold that lets the most similar neighbouring layers form a cluster.

    The largest CKA(l, l+1) over pairs whose later layer is not in ``exclude`` (layers
    that cannot or should not be removed), rounded down to ``step``, but never below
    ``floor`` (below that, layers are not redundant enough to try). Used by
    ``MPruner(threshold="auto")``.
    """
    sims = [s for i, s in enumerate(adjacent_similarities(cka)) if not math.isnan(s) and i + 1 not in set(exclude)]
    if not sims:
        return 1.0
    return max(floor, math.floor(max(sims) / step) * step)


# Renamed in 0.2 (a second public select_layers lived in mpruner.analysis.layers).
__getattr__ = forward_names(__name__, {"select_layers": ("mpruner.prune.cluster", "redundant_members")})

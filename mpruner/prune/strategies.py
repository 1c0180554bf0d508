"""Which blocks an attempt removes, for the selection strategies LLM depth pruning uses.

- ``"cluster"``: MPruner's anchor clusters of consecutive blocks with CKA >= threshold
  (the loop's own planner, :meth:`MPruner._plan`).
- ``"lowest-influence"``: the blocks with the lowest Block Influence, 1 - cos(input, output)
  over real tokens (ShortGPT, Men et al. 2024).
- ``"contiguous"``: the run of consecutive blocks whose input and output are closest by
  angular distance arccos(cos)/pi (Gromov et al. 2024, "The Unreasonable Ineffectiveness
  of the Deeper Layers").

- a block-ranking method of :mod:`mpruner.lm` (``"cka"``, ``"influence"``, ``"angular"``,
  ``"update"``, ``"loo"``, ``"greedy"``, ``"auto"``): the blocks of lowest score (for
  ``"greedy"``, the first ones SLEB's greedy order removes), the first and last block kept.

All but ``"cluster"`` remove ``n`` blocks in all (or down to a target depth). Attempt k of a model
removes ceil(remaining / k) blocks: everything at once first, and after a rollback a
finer step (k = 2, 3, ... up to ``max_granularity``), through the same remove / heal /
evaluate / accept-or-roll-back loop and checkpoints as ``"cluster"``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Set, Tuple, Union

import torch

from ..lm.select import METHODS as RANKINGS

RANKING_SELECTIONS = RANKINGS + ("auto",)
SELECTIONS = ("cluster", "lowest-influence", "contiguous") + RANKING_SELECTIONS
# The analysis each strategy reads (all capture block inputs in the same pass); the ranking
# methods score blocks with mpruner.lm.rank_blocks and keep this pass for the attempt's record.
ANALYSIS_METRIC = {"lowest-influence": "cosine", "contiguous": "angular", **{m: "angular" for m in RANKING_SELECTIONS}}

Plan = Union[str, Tuple[int, float, List[int]]]


def lowest_influence(influence: torch.Tensor, size: int, candidates: Set[int]) -> List[int]:
    """The ``size`` candidate blocks of lowest Block Influence (ties: the later block first, as
    deeper blocks are the usual redundant ones), sorted by index."""
    order = sorted(candidates, key=lambda i: (float(influence[i]), -i))
    return sorted(order[:size])


def best_run(distance: torch.Tensor, size: int, candidates: Set[int], rejected: Sequence[List[int]] = ()):
    """(start, score) of the run of ``size`` consecutive candidate blocks with the smallest
    input-to-output angular distance ``distance[start]`` (``Analysis.run_distance(size)``), or None."""
    best = None
    for start in range(distance.shape[0]):
        run = list(range(start, start + size))
        if not set(run) <= candidates or run in rejected:
            continue
        score = float(distance[start])
        if best is None or score < best[1] - 1e-15 or (abs(score - best[1]) <= 1e-15 and start > best[0]):
            best = (start, score)
    return best


def plan(select: str, analysis, remaining: int, granularity: int, max_granularity: int, allowed: Set[int],
         excluded: Sequence[int], rejected: Sequence[List[int]], scores: Optional[torch.Tensor] = None) -> Plan:
    """(granularity, score, blocks to remove) for the next attempt, or why there is none.

    ``score`` is the mean Block Influence of the removed blocks (or of ``scores``, a ranking
    method's scores), or the run's angular distance.
    A set already rolled back is never tried again: the step becomes finer instead.
    """
    if remaining <= 0:
        return "removed the requested number of blocks"
    candidates = set(allowed) - set(excluded)
    k = granularity
    while k <= max_granularity:
        size = min(math.ceil(remaining / k), len(candidates))
        if size < 1:
            return "no removable block left" + (f" (excluded after rollback: {sorted(excluded)})" if excluded else "")
        if select != "contiguous":
            influence = analysis.block_influence() if scores is None else scores
            removed = lowest_influence(influence, size, candidates)
            if removed not in rejected:
                return k, float(influence[removed].mean()), removed
        else:
            found = best_run(analysis.run_distance(size), size, candidates, rejected)
            if found is not None:
                start, score = found
                return k, score, list(range(start, start + size))
        if size == 1:
            return "every single-block removal left was rolled back"
        k += 1
    return f"rejected up to max_granularity={max_granularity}"


def cka_cluster_blocks(cka: torch.Tensor, n: int, candidates: Set[int], method: str = "anchor") -> List[int]:
    """``n`` blocks chosen by MPruner's clusters: the highest CKA threshold whose clusters
    (granularity 1) offer at least ``n`` candidates, then the ``n`` most similar to their
    cluster's anchor. Lets CKA stand beside the token metrics at the same number of blocks."""
    from .cluster import cluster_layers, redundant_members

    values = sorted({float(v) for v in cka.flatten().tolist() if v == v}, reverse=True)
    for tau in values:
        clusters = cluster_layers(cka, tau, method)
        picked = [i for i in redundant_members(clusters, 1) if i in candidates]
        if len(picked) >= n:
            anchor = {i: c[0] for c in clusters for i in c}
            return sorted(sorted(picked, key=lambda i: (-float(cka[anchor[i], i]), -i))[:n])
    raise ValueError(f"the CKA clusters never offer {n} removable blocks (candidates: {sorted(candidates)})")

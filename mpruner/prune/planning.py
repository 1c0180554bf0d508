"""Which blocks the next attempt of the MPruner loop removes, given what was rolled back.

:class:`AttemptPlanning` is the planning half of :class:`mpruner.MPruner`: it reads and advances
the loop's ``granularity``, ``_excluded`` (layers whose removal alone was rolled back) and
``_rejected`` (removal sets rolled back) for the current model.
"""
from __future__ import annotations

import torch

from . import strategies
from .cluster import adjacent_similarities, auto_threshold, cluster_layers, redundant_members

AUTO_FLOOR = 0.9  # threshold="auto" never tries layers less similar than this to their predecessor


class AttemptPlanning:
    """Plans attempts from the loop's state (see the module docstring)."""

    def _plan(self, cka: torch.Tensor, allowed: set):
        """(threshold, clusters, indices to remove) for the next attempt, or why there is none.

        Layers that cannot go (shape-changing blocks) or whose removal alone was rolled
        back for this model are excluded, and a removal set already rejected is never
        tried again. With a fixed threshold a repeated set means a finer granularity
        (stopping past ``max_granularity``, as in MPruner); with ``threshold="auto"``,
        once granularity gives nothing new, layers are tried one at a time, the one
        most similar to its predecessor first.
        """
        auto = self.threshold == "auto"
        while True:
            excluded = set(self._excluded) | (set(range(cka.shape[0])) - allowed)
            threshold = auto_threshold(cka, floor=AUTO_FLOOR, exclude=excluded) if auto else float(self.threshold)
            clusters = cluster_layers(cka, threshold, self.cluster_method)
            k = min(self.granularity, self.max_granularity)
            removed = [i for i in redundant_members(clusters, k) if i not in excluded]
            if not removed and auto:
                # Anchored clusters can miss a similar pair further down (its anchor is
                # excluded): try the most similar remaining layer alone.
                left = [i for i in range(1, cka.shape[0]) if i not in excluded and float(cka[i - 1, i]) >= AUTO_FLOOR]
                removed = [max(left, key=lambda i: float(cka[i - 1, i]))] if left else []
            if not removed:
                sims = ", ".join(f"{s:.4f}" for s in adjacent_similarities(cka))
                note = f"; excluded after rollback: {sorted(self._excluded)}" if self._excluded else ""
                where = (f"no removable layer left with adjacent CKA >= {AUTO_FLOOR}" if auto
                         else f"at threshold {threshold:.4f}")
                return f"nothing to remove: {where} (adjacent CKA: {sims}{note})"
            repeated = sorted(removed) in self._rejected
            if not auto:
                if self.granularity > self.max_granularity:
                    return f"rejected up to max_granularity={self.max_granularity}"
                if not repeated:
                    return threshold, clusters, removed
                if len(removed) == 1:
                    self._excluded.append(removed[0])
                else:
                    self.granularity += 1
                continue
            if not repeated and self.granularity <= self.max_granularity:
                return threshold, clusters, removed
            best = max(removed, key=lambda i: float(cka[i - 1, i]) if i > 0 else -1.0)
            if [best] in self._rejected:
                self._excluded.append(best)
                continue
            return threshold, clusters, [best]

    def _plan_strategy(self, allowed: set):
        """(score, [the removed run or set], removed) for lowest-influence / contiguous; see strategies.plan."""
        remaining = self.n - (self.layers_before - self._num_layers(self.model))
        plan = strategies.plan(self.select, self._analysis, remaining, self.granularity, self.max_granularity,
                               allowed, self._excluded, self._rejected, self._scores)
        if isinstance(plan, str):
            return plan
        self.granularity, score, removed = plan
        return score, [removed], removed

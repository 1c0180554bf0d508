"""What a pruning run leaves: one :class:`Iteration` per attempt and the :class:`PruneResult`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch.nn as nn


@dataclass
class Iteration:
    """One attempt of the loop (one entry of ``PruneResult.history``)."""
    iteration: int
    granularity: int
    threshold: float
    layer_names: List[str]
    cka: List[List[float]]
    clusters: List[List[int]]
    removed: List[int]            # indices into the block list of the model this attempt started from
    removed_names: List[str]
    layers_before: int
    layers_after: int
    metric: Optional[float]
    accepted: bool
    seconds: Dict[str, float] = field(default_factory=dict)
    # What ``cka`` and ``threshold`` hold: "cka" (the CKA matrix and the cluster threshold), or
    # the selection's analysis ("cosine", "angular": that matrix, and the removed blocks' score).
    similarity: str = "cka"

    @property
    def score_name(self) -> str:
        """What ``threshold`` is: the CKA threshold of the clusters, or the removed blocks' score."""
        return "threshold" if self.similarity == "cka" else "score"

    def report(self) -> dict:
        """The record for a report, each value under the name of what it is
        (``history.json``: an angular matrix under ``"angular"``, a score under ``"score"``)."""
        d = asdict(self)
        if self.similarity != "cka":
            d[self.similarity] = d.pop("cka")
            d["score"] = d.pop("threshold")
        return d


@dataclass
class PruneResult:
    model: nn.Module
    history: List[Iteration]
    metric_before: float
    metric_after: float
    layers_before: int
    layers_after: int
    params_before: int
    params_after: int
    tolerance: float
    tolerance_mode: str
    stop_reason: str
    seconds: Dict[str, float]
    stats_before: Optional[dict] = None
    stats_after: Optional[dict] = None
    higher_is_better: bool = True

    @property
    def bound(self) -> float:
        """The worst metric the run accepted: the original's, moved by the tolerance."""
        sign = 1 if self.higher_is_better else -1
        if self.tolerance_mode == "absolute":
            return self.metric_before - sign * self.tolerance
        return self.metric_before * (1 - sign * self.tolerance)

    def nothing_removed(self) -> Optional[str]:
        """Why a run removed no block (None when it removed some): one line with the fix."""
        if self.layers_after < self.layers_before:
            return None
        tried = [h for h in self.history if h.metric is not None]
        if not tried:
            return f"nothing removed: {self.stop_reason}"
        pick = max if self.higher_is_better else min
        best = pick(h.metric for h in tried)
        return (f"nothing removed: all {len(tried)} attempt(s) were rolled back; the best metric {best:.4f} is past "
                f"the bound {self.bound:.4f} (original {self.metric_before:.4f}, tolerance {self.tolerance} "
                f"{self.tolerance_mode}): allow more (--tolerance), heal longer, or remove fewer blocks")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["history"] = [asdict(h) for h in self.history]
        return d

    def summary(self) -> str:
        """A table of the attempts and the before/after totals."""
        lines = [f"{'iter':>4} {'k':>2} {'thresh':>7} {'removed':<24} {'layers':>9} {'metric':>9}  result"]
        for h in self.history:
            metric = "-" if h.metric is None else f"{h.metric:.4f}"
            removed = ",".join(str(i) for i in h.removed) or "-"
            lines.append(f"{h.iteration:>4} {h.granularity:>2} {h.threshold:>7.4f} {removed:<24} "
                         f"{h.layers_before:>3} -> {h.layers_after:<3} {metric:>9}  "
                         f"{'accepted' if h.accepted else 'rolled back'}")
        pct = 100.0 * (1 - self.params_after / max(1, self.params_before))
        lines += [
            "",
            f"layers   {self.layers_before} -> {self.layers_after}",
            f"params   {self.params_before:,} -> {self.params_after:,} (-{pct:.1f}%)",
            f"metric   {self.metric_before:.4f} -> {self.metric_after:.4f} "
            f"(tolerance {self.tolerance} {self.tolerance_mode}: bound {self.bound:.4f})",
            f"stopped  {self.stop_reason}",
            "time     " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()),
        ]
        if self.nothing_removed():
            lines.append(self.nothing_removed())
        return "\n".join(lines)

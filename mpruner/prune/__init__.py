"""The MPruner method: cluster similar layers, remove, recover, accept or roll back.

- :mod:`.loop`: ``MPruner``, the analyse -> cluster -> remove -> fine-tune -> evaluate ->
  accept-or-roll-back loop, checkpointed after every attempt (:mod:`.checkpoint`).
- :mod:`.cluster`: clusters of consecutive similar layers and which members go;
  :mod:`.strategies`: the LLM selection rules beside them.
- :mod:`.pipeline`: depth, then width, then sparsity, with one acceptance discipline.
- :mod:`.outputs`: a run's report folder (summary, history, heatmaps, the model).

Recovery training is :mod:`mpruner.training`; the metrics are :mod:`mpruner.evaluation`.
"""
from ..moved import forward_names
from .cluster import adjacent_similarities, auto_threshold, cluster_layers, redundant_members
from .loop import Iteration, MPruner, PruneResult
from .pipeline import Pipeline, PipelineResult, Stage

__all__ = ["cluster_layers", "redundant_members", "adjacent_similarities", "auto_threshold", "MPruner",
           "PruneResult", "Iteration", "Pipeline", "PipelineResult", "Stage"]

# Renamed or moved to their own homes.
__getattr__ = forward_names(__name__, {"select_layers": ("mpruner.prune.cluster", "redundant_members"),
                                       "Finetuner": ("mpruner.training", "Finetuner")})

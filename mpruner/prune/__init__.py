"""The MPruner method: cluster similar layers, remove, recover, accept or roll back."""
from .cluster import adjacent_similarities, auto_threshold, cluster_layers, select_layers
from .finetune import Finetuner
from .loop import Iteration, MPruner, PruneResult
from .pipeline import Pipeline, PipelineResult, Stage

__all__ = ["cluster_layers", "select_layers", "adjacent_similarities", "auto_threshold", "Finetuner", "MPruner",
           "PruneResult", "Iteration", "Pipeline", "PipelineResult", "Stage"]

"""Layer surgery: remove whole blocks from a model, repair it, save and reload it (with a model card).

Independent of the CKA engine: nothing here imports mpruner.engine. The architecture knowledge
(where the blocks are, how to cut them out) lives in mpruner.adapters.
"""
from .card import model_card, write_model_card
from .persist import load_pruned, read_record, save_pruned
from .record import get_record
from .remove import removable_layers, remove_layers
from .stats import ModelStats, model_stats

__all__ = ["remove_layers", "removable_layers", "save_pruned", "load_pruned", "read_record", "get_record",
           "model_stats", "ModelStats", "model_card", "write_model_card"]

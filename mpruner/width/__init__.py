"""Structured width pruning on Torch-Pruning: attention heads, MLP channels, CNN channels.

``prune_width`` builds on ``torch_pruning.pruner.BasePruner`` (install with
``pip install torch-pruning`` or ``pip install mpruner[width]``; imported only when called)
and repairs what Torch-Pruning leaves stale in Hugging Face configs and attention modules,
so that ``save_pretrained`` -> plain ``from_pretrained`` reloads the narrower model; other
models save and reload through ``mpruner.save_pruned`` / ``load_pruned``.
"""
from .prune import IMPORTANCES, prune_width

__all__ = ["prune_width", "IMPORTANCES"]

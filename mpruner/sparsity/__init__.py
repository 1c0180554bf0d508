"""Sparsity after depth pruning: Wanda (Sun et al. 2024), unstructured or N:M.

``wanda`` zeroes the weights with the lowest ``|W| * ||X||`` scores and holds the zeros with
``torch.nn.utils.prune`` masks, so recovery fine-tuning keeps them; ``make_permanent``
folds the masks into the weights before saving; ``report`` counts zeros per layer.
"""
from .layers import target_layers
from .masks import attach_masks, frozen_copy, has_masks, make_permanent, masks_from_zeros, refresh_masked_weights
from .summary import SparsityReport, count_nonzero, report
from .semi_structured import to_semi_structured
from .stats import InputNorms
from .wanda import parse_pattern, wanda, wanda_masks

__all__ = ["wanda", "wanda_masks", "parse_pattern", "report", "SparsityReport", "count_nonzero", "make_permanent", "frozen_copy", "refresh_masked_weights",
           "attach_masks", "has_masks", "masks_from_zeros", "target_layers", "InputNorms", "to_semi_structured"]

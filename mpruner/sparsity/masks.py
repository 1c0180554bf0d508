"""Sparsity masks held by ``torch.nn.utils.prune``: zeros that stay zeros while fine-tuning.

A custom mask per weight (``prune.custom_from_mask``) makes the forward pass use
``weight_orig * weight_mask``, so gradients and optimizer steps cannot revive a pruned
weight. ``make_permanent`` folds the masks into plain ``weight`` parameters, the form that
``save_pretrained`` / ``save_pruned`` write and plain ``from_pretrained`` reads.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
from torch.nn.utils import prune

from .layers import is_target


def has_masks(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a ``torch.nn.utils.prune`` mask on its weight."""
    return any(hasattr(m, "weight_mask") and hasattr(m, "weight_orig") for m in model.modules())


def attach_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Hold ``masks`` (module name -> 0/1 tensor of the weight's shape) with prune custom masks.

    A module already masked gets the product of both masks (PyTorch's PruningContainer).
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        prune.custom_from_mask(module, "weight", mask.to(device=module.weight.device, dtype=module.weight.dtype))
    return model


def refresh_masked_weights(model: nn.Module) -> nn.Module:
    """Recomputes every masked ``weight`` (``weight_orig * weight_mask``) outside autograd.

    After a training step the attribute still holds the product from the last forward pass,
    a tensor with autograd history, which ``copy.deepcopy`` refuses; this makes it a plain tensor.
    """
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with the masks folded into plain weights (what gets saved); ``model`` keeps its masks."""
    return make_permanent(copy.deepcopy(refresh_masked_weights(model)))


def make_permanent(model: nn.Module) -> nn.Module:
    """Folds every prune mask into its weight (in place); returns ``model``. Idempotent."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


def masks_from_zeros(model: nn.Module, names: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Masks (weight != 0) for the sparsifiable layers holding zeros (or ``names``): the way to
    re-arm a saved sparse model's zeros before more fine-tuning."""
    modules = dict(model.named_modules())
    chosen = list(names) if names is not None else [n for n, m in modules.items() if is_target(m)]
    masks = {}
    for name in chosen:
        weight = modules[name].weight
        if names is not None or bool((weight == 0).any()):
            masks[name] = (weight != 0).to(weight.dtype)
    return masks

"""Shared machinery for Hugging Face transformers models.

Detection is duck-typed on ``model.config.model_type`` so that importing
mpruner never imports transformers.
"""
from __future__ import annotations

import copy
from typing import ClassVar, List, Optional, Sequence, Tuple

import torch.nn as nn

from .blocks import BlockList
from .base import Adapter, Plan, kept_indices
from .traits import WidthLayout

# Config fields that hold one entry per layer and must lose the removed ones.
# `layer_types` drives attention masks and the KV-cache layout in recent
# transformers (Qwen2 sliding-window layers, hybrid models).
PER_LAYER_FIELDS = ("layer_types",)


def hf_model_type(model) -> Optional[str]:
    """The Hugging Face ``model_type`` of a PreTrainedModel, else None."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        return None
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def is_hf_config(obj) -> bool:
    return hasattr(obj, "model_type") and hasattr(obj, "to_dict") and hasattr(obj, "save_pretrained")


def find_container(model: nn.Module, suffixes: Sequence[str]) -> Optional[Tuple[str, nn.ModuleList]]:
    """The ModuleList whose qualified name is, or ends with, one of ``suffixes``.

    The shortest match wins: the stack of the model itself, not one nested in a
    sub-module (a vision tower, a draft model).
    """
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList)
             and any(name == s or name.endswith("." + s) for s in suffixes)]
    if not found:
        return None
    return min(found, key=lambda item: (item[0].count("."), len(item[0])))


def own_configs(model: nn.Module) -> None:
    """Give the model private copies of its config objects.

    A config object may be shared with another model built from it. Editing it
    in place would silently change that model (LLaMA runs only the first
    ``config.num_hidden_layers`` layers), so surgery edits copies. Objects
    shared within the model stay shared (T5's attention modules and stack).
    """
    copies = {}
    for module in model.modules():
        config = module.__dict__.get("config")
        if is_hf_config(config):
            if id(config) not in copies:
                copies[id(config)] = copy.deepcopy(config)
            module.config = copies[id(config)]


def configs_of(model: nn.Module) -> List:
    """The distinct config objects referenced by the model's modules."""
    seen = {}
    for module in model.modules():
        config = module.__dict__.get("config")
        if is_hf_config(config):
            seen.setdefault(id(config), config)
    return list(seen.values())


def renumber_layer_idx(blocks: Sequence[nn.Module]) -> None:
    """Set ``layer_idx`` = new position on every module of each kept block.

    Attention modules address their KV-cache slot by ``layer_idx``; after a
    removal, stale indices point past the (shorter) cache or collide.
    """
    for position, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(module.__dict__.get("layer_idx"), int):
                module.layer_idx = position


def shrink_layer_config(config, kept: Sequence[int], old_length: int) -> None:
    """Make a config describe only the ``kept`` layers (old indices, in order)."""
    config.num_hidden_layers = len(kept)  # attribute_map covers n_layer, n_layers, num_layers
    for field in PER_LAYER_FIELDS:
        value = config.__dict__.get(field)
        if isinstance(value, (list, tuple)) and len(value) == old_length:
            setattr(config, field, type(value)(value[i] for i in kept))
    # Qwen2: layers with index >= max_window_layers use sliding-window
    # attention. Count the kept ones below the old boundary so the field keeps
    # meaning the same layers (layer_types, saved explicitly, already does).
    max_window = config.__dict__.get("max_window_layers")
    if isinstance(max_window, int) and not isinstance(max_window, bool):
        config.max_window_layers = sum(1 for i in kept if i < max_window)
    if getattr(config, "is_heterogeneous", False):
        remap_per_layer_config(config, kept)


def remap_per_layer_config(config, kept: Sequence[int]) -> None:
    """Renumber a heterogeneous config's per-layer overrides (transformers >= 5)."""
    overrides = config._heterogeneity_spec.per_layer_overrides
    new_index = {old: new for new, old in enumerate(kept)}
    config.per_layer_config = {new_index[old]: copy.deepcopy(values)
                               for old, values in overrides.items() if old in new_index}


class HFAdapter(Adapter):
    """A Hugging Face model with one ModuleList of layers and a layer count in its config.

    Class attributes (the family's entry in the one registry of architectures):
        model_types: the ``config.model_type`` values this adapter handles; each appears in
            exactly one adapter.
        container_suffixes: qualified-name suffixes of the block container.
        expects_bos: the family was trained with a BOS token at the start of every document,
            so ``perplexity`` prepends one to every window by default.
        width_layout: how ``prune_width`` prunes the family (:class:`~.traits.WidthLayout`);
            ``None``: width pruning does not handle it.
        causal_lm: a decoder-only language model: its blocks read and write one residual
            stream, which carries a few massive dimensions, so ``analyze`` normalizes each token
            vector there by default; ``mpruner prune --task causal-lm`` and the loss-driven
            block choices (``mpruner.lm``) accept it.
        residual_projection: the path, inside one block, of the linear layer whose output is the
            MLP's whole contribution to the residual stream (LLaMA ``"mlp.down_proj"``, GPT-2
            ``"mlp.c_proj"``); ``mpruner.lm.linear_replacement`` folds its fitted map there.
            ``None`` where the MLP output passes through anything else before the residual add
            (a norm, experts), so no single matrix can take the map.
    """

    model_types: ClassVar[Tuple[str, ...]] = ()
    container_suffixes: ClassVar[Tuple[str, ...]] = ()
    expects_bos: ClassVar[bool] = False
    width_layout: ClassVar[Optional[WidthLayout]] = None
    causal_lm: ClassVar[bool] = False
    residual_projection: ClassVar[Optional[str]] = None

    @classmethod
    def matches(cls, model) -> bool:
        return hf_model_type(model) in cls.model_types and find_container(model, cls.container_suffixes) is not None

    def architecture(self) -> str:
        return hf_model_type(self.model)

    def stacks(self):
        name, container = find_container(self.model, self.container_suffixes)
        return [(name, [(name, container)])]

    def apply(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        own_configs(self.model)
        super().apply(plan, lists)

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        (block_list,) = lists
        container = self.model.get_submodule(block_list.name)
        renumber_layer_idx(list(container))
        kept = kept_indices(len(block_list), plan.get(block_list.name, []))
        for config in configs_of(self.model):
            shrink_layer_config(config, kept, len(block_list))

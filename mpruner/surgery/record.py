"""The removal history a pruned model carries, for re-applying it to a fresh model.

Stored as a plain dict attribute on the root module, so it survives
``copy.deepcopy`` and travels with the model through the pruning loop:

    {"adapter": "torchvision-resnet",
     "original": {"layer1..layer4": 8},          # block counts before any removal
     "steps": [{"layer1..layer4": [1, 5]}, ...],  # indices as of each step
     "width": [{"after": 1, "modules": {...}}]}   # width pruning after that many steps (new shapes)

Steps keep the indices the caller used at that step, so replaying them in order
on the original architecture rebuilds the pruned one exactly.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch.nn as nn

from ..adapters import BlockList

ATTRIBUTE = "_mpruner_surgery"


def get_record(model: nn.Module) -> Optional[dict]:
    """The model's removal history, or None if mpruner never removed anything from it."""
    record = model.__dict__.get(ATTRIBUTE)
    return copy.deepcopy(record) if record is not None else None


def append_step(model: nn.Module, adapter_name: str, lists_before: Sequence[BlockList], plan: dict) -> None:
    record = get_record(model) or {"adapter": adapter_name,
                                   "original": {bl.name: len(bl) for bl in lists_before},
                                   "steps": []}
    record["steps"].append({name: list(indices) for name, indices in plan.items()})
    setattr(model, ATTRIBUTE, record)


def append_width_step(model: nn.Module, adapter_name, lists_before: Sequence[BlockList], modules: dict) -> None:
    """Record that ``modules`` (``mpruner.surgery.reshape`` specs) were resized after the removals so far."""
    record = get_record(model) or {"adapter": adapter_name,
                                   "original": {bl.name: len(bl) for bl in lists_before},
                                   "steps": []}
    record.setdefault("width", []).append({"after": len(record["steps"]), "modules": copy.deepcopy(modules)})
    setattr(model, ATTRIBUTE, record)

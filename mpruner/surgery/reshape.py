"""Width changes in a removal record: the new shapes of the modules a width pruner resized.

Width pruning (``mpruner.width``) replaces tensors with narrower ones and updates the
module's size attributes. To rebuild such a model from its original architecture,
``load_pruned`` re-creates the same shapes (empty tensors of the recorded shape, the
recorded attributes) before loading the saved weights into them.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

# The integer attributes width pruners update next to the tensors (Torch-Pruning's prune functions).
SIZE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                   "normalized_shape", "embedding_dim", "nf", "num_embeddings")


def module_shapes(model: nn.Module) -> Dict[str, dict]:
    """``{module name: {"tensors": {name: shape}, "attributes": {...}}}`` for every module with
    tensors of its own (parameters and persistent buffers, not recursing)."""
    out = {}
    for name, module in model.named_modules():
        tensors = {n: list(p.shape) for n, p in module.named_parameters(recurse=False)}
        tensors.update({n: list(b.shape) for n, b in module.named_buffers(recurse=False)
                        if b is not None and n not in module._non_persistent_buffers_set})
        if not tensors:
            continue
        attributes = {}
        for attr in SIZE_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, (int, tuple, list)) and not isinstance(value, bool):
                attributes[attr] = list(value) if isinstance(value, (tuple, list)) else value
        out[name] = {"tensors": tensors, "attributes": attributes}
    return out


def changed_shapes(before: Dict[str, dict], after: Dict[str, dict]) -> Dict[str, dict]:
    """The modules of ``after`` whose tensor shapes or size attributes differ from ``before``."""
    return {name: spec for name, spec in after.items() if before.get(name) != spec}


def apply_shapes(model: nn.Module, modules: Dict[str, dict]) -> None:
    """Give ``model``'s modules the recorded shapes (empty tensors; the weights are loaded next)."""
    table = dict(model.named_modules())
    for name, spec in modules.items():
        if name not in table:
            raise ValueError(f"the record resizes module {name!r}, which this model does not have; is the "
                             "factory the architecture that was pruned?")
        module = table[name]
        for tensor_name, shape in spec["tensors"].items():
            old = getattr(module, tensor_name, None)
            if not isinstance(old, torch.Tensor):
                raise ValueError(f"the record resizes {name}.{tensor_name}, which this model does not have")
            new = torch.empty(shape, dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(module, tensor_name, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module.register_buffer(tensor_name, new)
        for attr, value in spec["attributes"].items():
            current = getattr(module, attr, None)
            setattr(module, attr, tuple(value) if isinstance(current, tuple) else value)

"""Which layers Wanda sparsifies, and each one's weight seen as (out_features, in_features)."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..adapters import find_blocks


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D`` (a linear layer whose weight is stored (in, out)),
    recognised without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def is_pointwise_conv(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
            and tuple(module.stride) == (1, 1))


def is_target(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module) or is_pointwise_conv(module)


def in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    if is_conv1d(module):
        return module.weight.shape[0]
    return module.in_channels


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (``weight_orig * weight_mask`` under a prune mask)."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def as_rows(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as (out_features, in_features): rows are outputs, columns input features."""
    if is_conv1d(module):
        return weight.t()
    if weight.dim() == 4:
        return weight[:, :, 0, 0]
    return weight


def from_rows(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`as_rows` (for masks)."""
    if is_conv1d(module):
        return rows.t().contiguous()
    if isinstance(module, nn.Conv2d):
        return rows[:, :, None, None].contiguous()
    return rows.contiguous()


def block_groups(model: nn.Module) -> List[Tuple[str, List[str]]]:
    """``(block name, [target layer names inside it])`` for every block of every block list,
    in forward order (the order of ``find_blocks``)."""
    groups = []
    for bl in find_blocks(model):
        for name, block in bl.blocks:
            inside = [f"{name}.{sub}" for sub, m in block.named_modules() if sub and is_target(m)]
            if inside:
                groups.append((name, inside))
    return groups


def target_layers(model: nn.Module, layers: Union[str, Sequence[str]] = "auto") -> List[Tuple[str, List[str]]]:
    """The layer groups Wanda prunes one after the other (``sequential=True``).

    ``"auto"``: every ``nn.Linear``, GPT-2 ``Conv1D`` and 1x1 ``nn.Conv2d`` inside the blocks
    ``find_blocks`` reports, one group per block; embeddings, heads and classifiers stay dense.
    A list of module names: each its own group, in the model's module order.
    """
    if isinstance(layers, str):
        if layers != "auto":
            raise ValueError(f"layers must be 'auto' or a list of module names, got {layers!r}; for one layer "
                             f"pass layers=[{layers!r}]")
        try:
            groups = block_groups(model)
        except TypeError as error:
            raise ValueError(f"layers='auto' needs a model whose blocks mpruner finds ({error}); pass "
                             "layers=[module names] instead") from None
        if not groups:
            raise ValueError("layers='auto' matched no layer: the blocks hold no nn.Linear, GPT-2 Conv1D or 1x1 "
                             "nn.Conv2d; pass layers=[module names]")
        return groups
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"layers must be 'auto' or a non-empty list of module names, got {layers!r}")
    modules = dict(model.named_modules())
    wanted = list(dict.fromkeys(layers))
    for name in wanted:
        if name not in modules:
            raise ValueError(f"layers: {name!r} is not a module of this model (e.g. "
                             f"{[n for n, m in modules.items() if is_target(m)][:4]})")
        if not is_target(modules[name]):
            raise ValueError(f"layers: {name!r} is a {type(modules[name]).__name__}; Wanda prunes nn.Linear, GPT-2 "
                             "Conv1D and 1x1 nn.Conv2d (groups=1, stride 1)")
    order = {n: i for i, n in enumerate(modules)}
    return [(name, [name]) for name in sorted(wanted, key=order.__getitem__)]

"""2:4 sparse weights as PyTorch semi-structured sparse tensors (CUDA, sm80+): the fast kernels.

Only where PyTorch supports it: CUDA tensors, float16/bfloat16 (or int8), layers whose
weight is 2:4 sparse. Unmeasured on CPU-only machines; see the README for what was run.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .masks import make_permanent


def _is_2_4(w: torch.Tensor) -> bool:
    if w.dim() != 2 or w.shape[1] % 4:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def to_semi_structured(model: nn.Module) -> List[str]:
    """Replaces the weight of every 2:4 sparse ``nn.Linear`` on a CUDA device with
    ``torch.sparse.to_sparse_semi_structured(weight)`` (in place, after folding prune masks);
    returns the converted layer names. Raises on a CPU model, which has no such kernels."""
    from torch.sparse import to_sparse_semi_structured

    make_permanent(model)
    converted = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _is_2_4(module.weight.detach()):
            if module.weight.device.type != "cuda":
                raise ValueError(f"to_semi_structured needs the model on a CUDA GPU (layer {name!r} is on "
                                 f"{module.weight.device}); PyTorch has no CPU kernels for 2:4 sparse tensors")
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted.append(name)
    return converted

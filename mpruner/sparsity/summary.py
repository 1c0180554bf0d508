"""``report(model)``: zeros per layer and in total, as a table and a dict."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List

import torch.nn as nn

from .layers import effective_weight, is_target


@dataclass
class LayerSparsity:
    name: str
    kind: str
    shape: List[int]
    numel: int
    zeros: int
    masked: bool

    @property
    def sparsity(self) -> float:
        return self.zeros / max(1, self.numel)


@dataclass
class SparsityReport:
    """Zeros of every sparsifiable layer (``layers``) and of all parameters (``total_*``)."""
    layers: List[LayerSparsity] = field(default_factory=list)
    total_params: int = 0
    total_zeros: int = 0

    @property
    def nonzero(self) -> int:
        return self.total_params - self.total_zeros

    @property
    def sparsity(self) -> float:
        return self.total_zeros / max(1, self.total_params)

    def to_dict(self) -> dict:
        return {"total_params": self.total_params, "total_zeros": self.total_zeros, "nonzero": self.nonzero,
                "sparsity": self.sparsity,
                "layers": [{**asdict(l), "sparsity": l.sparsity} for l in self.layers]}

    def table(self) -> str:
        width = max([len(l.name) for l in self.layers] + [5])
        lines = [f"{'layer':<{width}} {'kind':<8} {'params':>10} {'zeros':>10} {'sparsity':>8}"]
        for l in self.layers:
            lines.append(f"{l.name:<{width}} {l.kind:<8} {l.numel:>10,} {l.zeros:>10,} {l.sparsity:>8.1%}"
                         f"{'  (masked)' if l.masked else ''}")
        lines.append(f"{'all parameters':<{width}} {'':<8} {self.total_params:>10,} {self.total_zeros:>10,} "
                     f"{self.sparsity:>8.1%}")
        return "\n".join(lines)

    __str__ = table


def _weights(model: nn.Module):
    """Every parameter as the forward pass uses it (masked weights through their masks), shared ones once."""
    seen = set()
    for module in model.modules():
        masked = hasattr(module, "weight_orig") and hasattr(module, "weight_mask")
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield effective_weight(module) if (masked and pname == "weight_orig") else p


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters (masked weights counted through their masks; shared tensors once)."""
    return int(sum(int((t != 0).sum()) for t in _weights(model)))


def report(model: nn.Module) -> SparsityReport:
    """Per-layer zeros of the sparsifiable layers (``nn.Linear``, GPT-2 ``Conv1D``, 1x1 conv) and
    total zeros over all parameters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rep = SparsityReport()
    for name, module in model.named_modules():
        if is_target(module):
            w = effective_weight(module)
            rep.layers.append(LayerSparsity(name, type(module).__name__, list(w.shape), w.numel(), int((w == 0).sum()),
                                            hasattr(module, "weight_mask")))
    for t in _weights(model):
        rep.total_params += t.numel()
        rep.total_zeros += int((t == 0).sum())
    return rep

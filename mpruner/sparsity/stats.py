"""Streamed input-norm statistics for Wanda: sum over real tokens of x_j^2, per input feature.

Forward hooks add each batch's squares in float64, so memory is one vector per layer
(O(sum of in_features)) whatever the amount of data; padding tokens are left out through
the batch's attention mask.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..analysis.hooks import HookSet
from .layers import in_features

MASK_KEYS = ("attention_mask",)


class InputNorms(HookSet):
    """Context manager: hooks on ``names``' modules accumulate Σ x_j² (float64) per input feature.

    Call ``start(batch)`` before each forward pass (it reads the batch's attention mask;
    without it every token counts and errors name batch -1); ``norms()`` gives ‖X_j‖₂ per
    layer. It can run beside other hooks (e.g. ``analyze``'s), so one pass over the data
    collects both.
    """

    def __init__(self, model: nn.Module, names: List[str]):
        super().__init__()
        modules = dict(model.named_modules())
        self.names = list(names)
        self.modules = [modules[n] for n in self.names]
        self.sums: Dict[str, torch.Tensor] = {}
        self.tokens: Dict[str, int] = {n: 0 for n in self.names}
        self._mask: Optional[torch.Tensor] = None
        self._batch = -1

    def _arm(self):
        for name, module in zip(self.names, self.modules):
            yield module.register_forward_hook(self._hook(name))

    def start(self, batch, index: int = 0) -> None:
        """Begin a batch: its attention mask (if any) selects the real tokens."""
        self._batch = index
        self._mask = None
        if isinstance(batch, dict):
            for key in MASK_KEYS:
                if isinstance(batch.get(key), torch.Tensor):
                    self._mask = batch[key]
                    break

    def _rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The layer input as (tokens, in_features), real tokens only."""
        if isinstance(module, nn.Conv2d):  # (B, C, H, W): every pixel is a sample
            return x.movedim(1, -1).reshape(-1, x.shape[1])
        mask = self._mask
        if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
            return x[mask.to(x.device) != 0]
        return x.reshape(-1, x.shape[-1])

    def _hook(self, name: str):
        def hook(module, args, output):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            rows = self._rows(module, x.detach())
            if rows.shape[-1] != in_features(module):
                raise RuntimeError(f"layer {name!r} got inputs with {rows.shape[-1]} features, expected "
                                   f"{in_features(module)}")
            sq = rows.double().pow(2).sum(0)
            if not torch.isfinite(sq).all():
                raise FloatingPointError(f"layer {name!r} received NaN or Inf activations in calibration batch "
                                         f"{self._batch}; Wanda's statistics would be meaningless (check the "
                                         "model and the data, e.g. a float16 overflow)")
            self.sums[name] = self.sums[name] + sq if name in self.sums else sq
            self.tokens[name] += rows.shape[0]

        return hook

    def norms(self) -> Dict[str, torch.Tensor]:
        """‖X_j‖₂ over all real tokens seen, per layer (float64); raises for a layer that never ran."""
        missing = [n for n in self.names if self.tokens[n] == 0]
        if missing:
            raise RuntimeError(f"layers {missing} never ran (or saw no real token) in the calibration forward "
                               "passes; choose layers the forward pass uses, or pass forward=...")
        return {n: self.sums[n].sqrt() for n in self.names}


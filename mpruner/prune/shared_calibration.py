"""One calibration pass for two stages: the CKA analysis of a model and Wanda's input norms.

``SharedCalibration.forward`` is handed to ``analyze`` (``forward=``): each batch it arms
:class:`mpruner.sparsity.InputNorms` hooks on the analysed model's Wanda layers, runs the
batch, and disarms them (so fine-tuning and evaluation never see the hooks). The norms of the
last model analysed are then ready for ``wanda(..., sequential=False, norms=...)``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ..analysis.batches import call_model
from ..sparsity import InputNorms, target_layers


class SharedCalibration:
    def __init__(self, forward: Optional[Callable] = None, layers="auto"):
        self.user_forward, self.layers = forward, layers
        self.model: Optional[nn.Module] = None
        self.stats: Optional[InputNorms] = None
        self.batches = 0

    def forward(self, model: nn.Module, batch):
        if model is not self.model:  # a new model is being analysed: start its sums afresh
            names = [n for _, group in target_layers(model, self.layers) for n in group]
            self.model, self.stats, self.batches = model, InputNorms(model, names), 0
        self.stats.start(batch, self.batches)
        self.batches += 1
        with self.stats:
            if self.user_forward is not None:
                return self.user_forward(model, batch)
            return call_model(model, batch, None, self.batches - 1)

    def norms_for(self, model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
        """The norms collected while analysing exactly ``model`` (None if it was not the last one analysed)."""
        if self.model is not model or self.stats is None:
            return None
        return self.stats.norms()

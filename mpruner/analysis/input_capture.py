"""Forward pre-hooks that hand each block's INPUT hidden states of one batch to the caller.

Block Influence (ShortGPT) compares a block's input with its output, so the inputs are
taken in the same forward pass as the outputs (``analyze(..., block_inputs=True)``).
Only the current batch is held; hooks are removed on ``__exit__``, also on errors.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from .hooks import HookSet
from .layers import LayerSelection
from .views import BatchContext


def input_tensor(args, kwargs, name: str) -> torch.Tensor:
    """The hidden states a block is called with: ``hidden_states=`` or its first tensor argument."""
    value = kwargs.get("hidden_states") if kwargs else None
    if value is None:
        value = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"block {name!r} was called without a hidden-states tensor (positional or hidden_states=); "
                        "block_inputs=True needs blocks that take their hidden states as input")
    return value


class InputCapture(HookSet):
    """Context manager: pre-hooks on ``selection``'s modules keep each block's input (B, T, D) and mask."""

    def __init__(self, selection: LayerSelection):
        super().__init__()
        self.selection = selection
        self._inputs: List[Optional[object]] = [None] * len(selection)
        self._context: Optional[BatchContext] = None

    def _arm(self):
        for index, module in enumerate(self.selection.modules):
            yield module.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def _clear(self) -> None:
        self._inputs = [None] * len(self.selection)
        self._context = None

    def _hook(self, index: int):
        name = self.selection.names[index]

        def hook(module: nn.Module, args, kwargs):
            if self._context is None:
                return None
            x = input_tensor(args, kwargs, name)
            if x.dim() != 3 or not x.is_floating_point():
                raise ValueError(f"block {name!r} takes a {tuple(x.shape)} {x.dtype} input; block inputs are compared "
                                 "token by token and must be floating-point (batch, tokens, features)")
            self._inputs[index] = (x, self._context.mask_for(x, name))
            return None

        return hook

    def start(self, context: BatchContext) -> None:
        self._inputs = [None] * len(self.selection)
        self._context = context

    def collect(self) -> List[object]:
        inputs = self._inputs
        self._inputs, self._context = [None] * len(self.selection), None
        missing = [self.selection.names[i] for i, x in enumerate(inputs) if x is None]
        if missing:
            raise RuntimeError(f"no input was seen for blocks {missing}; they did not run in the forward pass")
        return inputs

"""Forward hooks that hand each layer's (viewed) output of one batch to the caller.

Only the current batch is held: ``collect()`` gives the L outputs and forgets them.
Hooks are removed on ``__exit__``, also when the forward pass raised.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch.nn as nn

from .hooks import HookSet
from .layers import LayerSelection
from .views import BatchContext, hidden_tensor

ViewFn = Callable[[object, BatchContext, str], object]


class LayerCapture(HookSet):
    """Context manager: hooks on ``selection``'s modules apply ``view`` to each output."""

    def __init__(self, selection: LayerSelection, view: ViewFn):
        super().__init__()
        self.selection, self.view = selection, view
        self._outputs: List[Optional[object]] = [None] * len(selection)
        self._context: Optional[BatchContext] = None

    def _arm(self):
        for index, module in enumerate(self.selection.modules):
            yield module.register_forward_hook(self._hook(index))

    def _clear(self) -> None:
        self._outputs = [None] * len(self.selection)
        self._context = None

    def _hook(self, index: int):
        name = self.selection.names[index]

        def hook(module: nn.Module, args, output):
            if self._context is None:  # the model ran outside analyze's loop
                return
            if self._outputs[index] is not None:
                raise RuntimeError(f"layer {name!r} ran twice in one forward pass (batch {self._context.index}); "
                                   "analyze needs one output per layer and batch: shared or recurrent modules "
                                   "cannot be analysed this way, hook distinct modules (layers=[...])")
            self._outputs[index] = self.view(hidden_tensor(output, name), self._context, name)

        return hook

    def start(self, context: BatchContext) -> None:
        """Begin a batch: later hook calls belong to ``context``."""
        self._outputs = [None] * len(self.selection)
        self._context = context

    def collect(self) -> List[object]:
        """The viewed outputs of the batch just run, in layer order; forgets them."""
        outputs, context = self._outputs, self._context
        self._outputs, self._context = [None] * len(self.selection), None
        missing = [self.selection.names[i] for i, o in enumerate(outputs) if o is None]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass of batch "
                               f"{context.index if context else '?'}; analyze only layers the forward pass uses "
                               "(e.g. an encoder-decoder model needs decoder inputs for its decoder stack; pass "
                               "forward=... to call the model differently, or choose other layers=...)")
        return outputs

"""``CKAAccumulator(cuda_graph=True)``: the minibatch estimator's ``update()`` replayed from a CUDA graph.

On a GPU one ``update()`` is a few dozen small launches whose host work takes about as long as
the GPU work (the path never waits for the device, so it can be captured). A graph is captured
per input signature (shapes, dtypes, device) at the second batch of that signature, the first
having run eagerly (which also warms up cuBLAS and the kernels, as capture requires); later
batches are copied into the graph's static inputs (one multi-tensor copy) and replayed. The
static inputs hold one batch's activations more on the device. A failed capture (an operation
that cannot be captured) falls back to the eager path for good, with a warning.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..stacklevel import user_stacklevel


def signature(xs: Sequence[torch.Tensor]) -> Tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) for x in xs)


class _CUDAGraph:
    """torch.cuda.CUDAGraph behind the two calls CapturedUpdates makes (tests pass a stand-in)."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, fn: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            fn()

    def replay(self) -> None:
        self.graph.replay()


class CapturedUpdates:
    """Per-signature CUDA graphs of ``est.device_update`` for an estimator whose device state is
    updated in place (``MinibatchSums``)."""

    def __init__(self, est, make_graph: Callable[[], object] = _CUDAGraph, devices: Tuple[str, ...] = ("cuda",)):
        self.est, self.make_graph, self.devices = est, make_graph, devices
        self.seen: set = set()
        self.graphs: Dict[Tuple, Tuple[object, List[torch.Tensor], torch.Tensor]] = {}
        self.failed = False

    def clear(self) -> None:
        self.seen.clear()
        self.graphs.clear()

    def update(self, xs: List[torch.Tensor], names: Sequence[str], index: int) -> bool:
        """Runs the batch from a graph; False when the caller should run it eagerly instead."""
        if self.failed or xs[0].device.type not in self.devices:
            return False
        key = signature(xs)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:  # first batch of this signature: eager, the warm-up
                self.seen.add(key)
                return False
            entry = self._capture(xs, names, key)
            if entry is None:
                return False
        graph, static_xs, static_index = entry
        torch._foreach_copy_(static_xs, list(xs))
        static_index.fill_(index)
        graph.replay()
        return True

    def _capture(self, xs, names, key) -> Optional[Tuple[object, List[torch.Tensor], torch.Tensor]]:
        static_xs = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in xs]
        static_index = torch.zeros((), dtype=torch.long, device=xs[0].device)
        graph = self.make_graph()
        try:
            graph.capture(lambda: self.est.device_update(static_xs, names, static_index))
        except Exception as exc:  # noqa: BLE001 - any capture failure: keep the eager path
            self.failed = True
            warnings.warn(f"cuda_graph=True: the update could not be captured in a CUDA graph ({exc}); "
                          "running it eagerly from now on", RuntimeWarning, stacklevel=user_stacklevel())
            return None
        self.graphs[key] = (graph, static_xs, static_index)
        return self.graphs[key]

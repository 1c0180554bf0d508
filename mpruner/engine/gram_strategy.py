"""Which GEMMs build the Grams: one full product, or upper-triangle block rows (and how big).

The triangle needs about half the multiply-adds, but a BLAS may run the thin block-row
GEMMs at a lower rate than one square product (MKL did on the Xeon we measured), so
neither wins everywhere. The choice is measured: the first time a shape (n, the layers'
widths, dtype, precision, threads, device) meets the engine, every candidate runs on
synthetic layers of that shape and the fastest is kept for the rest of the process.
``MPRUNER_GRAM=full`` or ``triangle`` pins the strategy (the triangle's block size is
still measured). Every candidate computes the same upper triangle; the consumers read
nothing else.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Sequence, Tuple

import torch

from .ops import ops

ENV = "MPRUNER_GRAM"
STRATEGIES = ("full", "triangle")
_CACHE: Dict[Tuple, int] = {}
_LOCK = threading.Lock()
# Measuring costs a few Gram evaluations once per shape; a shape whose single evaluation
# already takes longer than this is measured once per candidate instead of three times.
_QUICK_S = 0.05


def pinned() -> str:
    """``MPRUNER_GRAM``: "" (measure), "full" or "triangle"; anything else is an error."""
    value = os.environ.get(ENV, "").strip().lower()
    if value and value not in STRATEGIES:
        raise ValueError(f"{ENV} must be 'full' or 'triangle' (or unset: measured per shape), got {value!r}")
    return value


def candidates(n: int, strategy: str = "") -> List[int]:
    """Block sizes to try: 0 is the full product, b > 0 triangle block rows of b rows."""
    blocks = sorted({b for b in (max(32, (n // k + 32) // 64 * 64) for k in (8, 4, 2)) if b < n})
    if strategy == "full" or not blocks:
        return [0]
    return blocks if strategy == "triangle" else [0] + blocks


def cached() -> Dict[Tuple, int]:
    """The choices made so far in this process: key -> block (0: full product)."""
    return dict(_CACHE)


def clear() -> None:
    """Forgets the measured choices (the next Grams of each shape are measured again)."""
    with _LOCK:
        _CACHE.clear()


def _measurable(xs: Sequence[torch.Tensor]) -> bool:
    """Real tensors outside tracing and dispatch modes (fake tensors, op counters): only
    they can be timed, and a mode would see the measurement's calls as the user's."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    x = xs[0]
    if torch.compiler.is_compiling() or x.device.type == "meta" or _get_current_dispatch_mode() is not None:
        return False
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return False  # a CUDA graph being captured (cuda_graph=True) cannot synchronise
    try:
        from torch._subclasses.fake_tensor import is_fake

        return not is_fake(x)
    except ImportError:  # pragma: no cover - old torch
        return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def block_for(xs: Sequence[torch.Tensor], precision: str, kernel: str = "linear") -> int:
    """The measured (or pinned) block argument of ``grams`` for these layers' shape."""
    strategy = pinned()
    n = xs[0].shape[0]
    options = candidates(n, strategy)
    if len(options) == 1:
        return options[0]
    if not _measurable(xs):
        return -1  # the op's default (traced or fake tensors cannot be timed)
    device = xs[0].device
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
    threads = torch.get_num_threads()
    # The CPU kernel gives each thread whole layers: as many layers as threads show the
    # rate of the real call. Batched device GEMMs want the real layer count.
    count = min(len(xs), threads) if device.type == "cpu" else len(xs)
    widths = tuple(int(x.shape[1]) for x in xs[:count])
    key = (str(device), n, widths, str(dtype), precision, threads, strategy, os.environ.get("MPRUNER_ENGINE_PATH"))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    choice = _measure(n, widths, dtype, device, precision, options)
    with _LOCK:
        _CACHE[key] = choice
    return choice


def _measure(n: int, widths: Tuple[int, ...], dtype, device, precision: str, options: List[int]) -> int:
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.randn(n, d, generator=g, dtype=dtype).to(device) for d in widths]

    def run(block: int) -> float:
        _sync(device)
        t = time.perf_counter()
        ops.grams(xs, "linear", 0.5, True, precision, block)
        _sync(device)
        return time.perf_counter() - t

    best = {b: run(b) for b in options}          # the first call of each also warms it up
    repeats = 3 if max(best.values()) < _QUICK_S else 1
    for _ in range(repeats):                     # interleaved: machine noise hits all alike
        for b in options:
            best[b] = min(best[b], run(b))
    return min(options, key=lambda b: (best[b], b))

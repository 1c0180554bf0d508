"""model_stats: size and speed of a model, for before/after reports."""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelStats:
    """Parameters, MACs of one forward pass on the example inputs, median
    latency of that pass in milliseconds, and bytes of weights (parameters and
    buffers, shared tensors once)."""

    params: int
    macs: int
    latency_ms: float
    weight_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"params {format_count(self.params)}, MACs {format_count(self.macs)}, latency {format_ms(self.latency_ms)}, "
                f"weights {format_count(self.weight_bytes)}B")


def format_ms(ms: float) -> str:
    """A duration given in milliseconds in the unit a person reads: ``850 µs``, ``12.3 ms``, ``1.12 s``, ``2.5 min``."""
    if ms != ms:  # NaN: not measured
        return "not measured"
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    if ms < 1e3:
        return f"{ms:.3g} ms"
    if ms < 60e3:
        return f"{ms / 1e3:.3g} s"
    return f"{ms / 60e3:.3g} min"


def format_count(value: float) -> str:
    """A count as a person reads it: ``5.44G``, ``22.7M``, ``850k``, ``12``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def run_forward(model: nn.Module, example_inputs):
    """Call ``model`` the Torch-Pruning way: a dict is keyword arguments, a
    tuple/list positional arguments, anything else the single argument."""
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _sync(model: nn.Module) -> None:
    for tensor in model.parameters():
        if tensor.device.type == "cuda":
            torch.cuda.synchronize(tensor.device)
        return


def _weight_bytes(model: nn.Module) -> int:
    unique = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        unique.setdefault(id(tensor), tensor)
    return sum(t.numel() * t.element_size() for t in unique.values())


def model_stats(model: nn.Module, example_inputs, *, warmup: int = 3, repeats: int = 10,
                measure_latency: bool = True) -> ModelStats:
    """Measure ``model`` on ``example_inputs`` (in eval mode, without autograd).

    MACs are half the FLOPs that ``torch.utils.flop_counter`` counts (matmuls,
    convolutions, attention); element-wise work is not counted. Latency is the
    median of ``repeats`` timed passes after ``warmup`` untimed ones (NaN when
    ``measure_latency`` is False). Each module's train/eval mode is restored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            counter = FlopCounterMode(display=False)
            with counter:
                run_forward(model, example_inputs)
            macs = counter.get_total_flops() // 2
            latency = float("nan")
            if measure_latency:
                for _ in range(warmup):
                    run_forward(model, example_inputs)
                times = []
                for _ in range(repeats):
                    _sync(model)
                    start = time.perf_counter()
                    run_forward(model, example_inputs)
                    _sync(model)
                    times.append((time.perf_counter() - start) * 1e3)
                latency = statistics.median(times)
    finally:
        for module, training in modes.items():
            module.training = training
    params = sum(p.numel() for p in model.parameters())
    return ModelStats(params=params, macs=int(macs), latency_ms=latency, weight_bytes=_weight_bytes(model))

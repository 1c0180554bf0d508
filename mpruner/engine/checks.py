"""Validation and normalisation of user inputs for the CKA API.

Every error names the argument and says how to fix it; nothing here copies data
except the half -> float32 conversion the engine needs.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch

from .precision import ALIASES, PRECISIONS, canonical, gemm_scope

KERNELS = ("linear", "rbf")
NAN_POLICIES = ("raise", "skip")


def check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")


def check_sigma(sigma, kernel):
    if sigma is None:
        return 0.5
    if kernel != "rbf":
        raise ValueError(f"sigma only applies to kernel='rbf' (got kernel={kernel!r}); drop sigma or use the RBF kernel")
    if not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number (fraction of the median distance, e.g. 0.5); got {sigma!r}")
    return float(sigma)


def min_samples(unbiased: bool) -> int:
    return 4 if unbiased else 2


def as_samples(x, name: str) -> torch.Tensor:
    """(n, ...) activation -> (n, d) float32/float64 view of the samples."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; CKA needs floating-point activations: pass {name}.float()")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); every layer needs at least one sample and feature")
    # CKA is a measurement here: the kernels have no backward, so activations that
    # require grad (a forward pass outside torch.no_grad) are read detached.
    x = x.detach()
    if x.dim() == 1:
        x = x.unsqueeze(1)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half types are computed in float32
    return x.reshape(x.shape[0], -1)


def as_layer_list(features, name: str) -> List[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a list of tensors (one per layer), got a single tensor; wrap it: [{name}]")
    try:
        feats = list(features)
    except TypeError:
        raise TypeError(f"{name} must be a list of tensors (one per layer), got {type(features).__name__}") from None
    if not feats:
        raise ValueError(f"{name} is empty; pass at least one layer's activations")
    return feats


def prepare_layers(features, unbiased: bool, name: str = "features", other=None, other_name: str = "other",
                   device: Optional[torch.device] = None, labels: Optional[Sequence[str]] = None,
                   device_fix: str = "") -> List[torch.Tensor]:
    """Checks a list of L activations (and optional M more) and returns them as (n, d) tensors.

    ``labels`` name the layers in errors as the caller wrote them (default ``features[i]``,
    ``other[j]``); ``device_fix`` is appended to the mixed-device error where the caller
    offers a way out (e.g. CKAAccumulator's ``device=``).
    """
    groups = [(name, as_layer_list(features, name))]
    if other is not None:
        groups.append((other_name, as_layer_list(other, other_name)))
    out, ref = [], None
    for gname, feats in groups:
        for i, x in enumerate(feats):
            label = labels[len(out)] if labels is not None else f"{gname}[{i}]"
            x = as_samples(x, label)
            if device is not None:
                x = x.to(device)
            if ref is None:
                ref = (label, x)
            else:
                rlabel, rx = ref
                if x.shape[0] != rx.shape[0]:
                    raise ValueError(f"{label} has {x.shape[0]} samples but {rlabel} has {rx.shape[0]}; "
                                     "every layer must see the same samples (same n)")
                if x.device != rx.device:
                    raise ValueError(f"{label} is on {x.device} but {rlabel} is on {rx.device}; "
                                     f"move all activations to one device{device_fix}")
            out.append(x)
    n = out[0].shape[0]
    need = min_samples(unbiased)
    if n < need:
        est = "unbiased" if unbiased else "biased"
        fix = "use unbiased=False or a larger batch" if unbiased else "use a larger batch"
        which = labels[0] if labels is not None else name
        raise ValueError(f"{which} has n={n} samples; the {est} estimator needs n >= {need}: {fix}")
    return out


def device_path(device: torch.device) -> bool:
    """Whether the engine takes its device (GPU) path: batched, no host sync per batch.
    ``MPRUNER_ENGINE_PATH=device`` routes CPU tensors through it (for tests)."""
    return device.type != "cpu" or os.environ.get("MPRUNER_ENGINE_PATH") == "device"


def fused_epilogue() -> bool:
    """``MPRUNER_FUSED_EPILOGUE=1``: the device path does everything after the HSIC pass (HSIC
    from the sums, NaN/Inf bookkeeping, accumulation) in one kernel, ``_hsic_finish``, instead of
    about a dozen ATen calls; a switch until a GPU run decides between the two."""
    value = os.environ.get("MPRUNER_FUSED_EPILOGUE", "0")
    if value not in ("0", "1"):
        raise ValueError(f"MPRUNER_FUSED_EPILOGUE must be 0 or 1, got {value!r}")
    return value == "1"


def compiling() -> bool:
    return torch.compiler.is_compiling()


def check_precision(precision) -> str:
    """The canonical precision name (``"tf32"`` is ``"high"``); unknown names list the valid ones."""
    return canonical(precision)


def gemm_precision(precision: str, device: torch.device):
    """torch's float32 matmul mode for ``precision`` on ``device``, for a scope (see
    :func:`mpruner.engine.precision.gemm_scope`)."""
    return gemm_scope(precision, device)

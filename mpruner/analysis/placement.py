"""Where a model takes its inputs when its blocks are spread over devices or offloaded.

A model dispatched by accelerate (``device_map="auto"``, ``dispatch_model``,
``cpu_offload``, ``disk_offload``) keeps offloaded weights on the ``meta`` device and moves
them in for each block's forward pass; its hooks know the execution device. The
activations captured from blocks on other devices are moved to the CKA device by the
sinks, one viewed batch at a time.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _hook_device(module: nn.Module):
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def execution_device(model: nn.Module) -> torch.device:
    """The device inputs go to: an accelerate hook's execution device, else the first
    parameter (or buffer) not on ``meta``, else the first hooked submodule's device; CPU if none."""
    device = _hook_device(model)
    if device is not None:
        return device
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    for module in model.modules():
        device = _hook_device(module)
        if device is not None:
            return device
    return torch.device("cpu")

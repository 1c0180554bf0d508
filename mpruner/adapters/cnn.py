"""Residual CNNs: Hugging Face ResNet, torchvision-style ResNet, EfficientNet-Lite.

Their blocks form one flat list across stages, in forward order. Only a block
whose output has its input's shape (identity shortcut: stride 1, same channel
count) may go; the others change the shape the next block expects.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .blocks import BlockList
from .base import Adapter, Plan
from .hf_common import HFAdapter, configs_of, find_container, hf_model_type

TORCHVISION_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _stride_is_one(stride) -> bool:
    strides = [stride] if isinstance(stride, int) else list(stride)
    return all(s == 1 for s in strides)


class HFResNetAdapter(HFAdapter):
    """Hugging Face ResNet: blocks are ``<...>.encoder.stages.<s>.layers.<j>``;
    ``config.depths`` holds the per-stage counts.

    A stage must keep at least one block: ``from_pretrained`` always builds a
    stage's first layer, so an emptied stage could not be reloaded.
    """

    name = "hf-resnet"
    model_types = ("resnet",)
    container_suffixes = ("encoder.stages",)

    def stacks(self):
        name, stages = find_container(self.model, self.container_suffixes)
        return [(name, [(f"{name}.{i}.layers", stage.layers) for i, stage in enumerate(stages)])]

    def is_removable(self, block: nn.Module) -> bool:
        return isinstance(getattr(block, "shortcut", None), nn.Identity)

    def check(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        (block_list,) = lists
        removed = set(plan.get(block_list.name, []))
        per_stage = {}
        for index, (container, _) in enumerate(block_list.locations):
            per_stage.setdefault(container, []).append(index)
        for container, indices in per_stage.items():
            if set(indices) <= removed:
                raise ValueError(
                    f"indices: removing {sorted(indices)} would empty stage {container!r}; a Hugging Face ResNet "
                    f"stage must keep at least one block (from_pretrained always builds one). Keep one of them.")

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        _, stages = find_container(self.model, self.container_suffixes)
        depths = [len(stage.layers) for stage in stages]
        for config in configs_of(self.model):
            if hasattr(config, "depths"):
                config.depths = list(depths)


class TorchvisionResNetAdapter(Adapter):
    """torchvision ResNet (and look-alikes such as timm's), detected by structure:
    ``layer1``..``layer4`` are ``nn.Sequential`` of blocks with a ``downsample``
    attribute (None for an identity shortcut)."""

    name = "torchvision-resnet"

    @classmethod
    def matches(cls, model) -> bool:
        if hf_model_type(model) is not None:
            return False
        stages = [getattr(model, s, None) for s in TORCHVISION_STAGES]
        if not all(isinstance(stage, nn.Sequential) for stage in stages):
            return False
        blocks = [block for stage in stages for block in stage]
        return bool(blocks) and all(hasattr(block, "downsample") for block in blocks)

    def stacks(self):
        return [("layer1..layer4", [(s, getattr(self.model, s)) for s in TORCHVISION_STAGES])]

    def is_removable(self, block: nn.Module) -> bool:
        return block.downsample is None


class EfficientNetLiteAdapter(Adapter):
    """EfficientNet(-Lite) of ``efficientnet_lite_pytorch`` / ``efficientnet_pytorch``:
    ``_blocks`` is a ModuleList of MBConv blocks with ``_block_args``."""

    name = "efficientnet-lite"

    @classmethod
    def matches(cls, model) -> bool:
        blocks = getattr(model, "_blocks", None)
        return (isinstance(blocks, nn.ModuleList) and len(blocks) > 0
                and all(hasattr(block, "_block_args") for block in blocks))

    def stacks(self):
        return [("_blocks", [("_blocks", self.model._blocks)])]

    def is_removable(self, block: nn.Module) -> bool:
        args = block._block_args
        return _stride_is_one(args.stride) and args.input_filters == args.output_filters


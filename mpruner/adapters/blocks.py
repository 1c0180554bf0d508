"""Block lists: the sequences of layers that depth pruning analyses and removes.

``find_blocks(model)`` (in :mod:`mpruner.adapters.registry`) returns, for each stack
of repeated blocks in a model, a :class:`BlockList` that names the stack, lists its blocks in forward order with
their qualified module names, and says which of them may be removed. It is the
one place where analysis (hooks, CKA) and surgery (``remove_layers``) agree on
what "block 3" means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Tuple

import torch.nn as nn

__all__ = ["BlockList"]


@dataclass(frozen=True)
class BlockList:
    """One stack of blocks, indexed 0..L-1 in forward order.

    Attributes:
        name: dotted name of the stack, the key ``remove_layers`` accepts in its
            dict form (``"bert.encoder.layer"``, ``"encoder.block"``; for
            multi-stage CNNs, whose blocks span several containers, a name such
            as ``"layer1..layer4"`` or ``"resnet.encoder.stages"``).
        adapter: name of the architecture adapter that found the stack
            (``"bert"``, ``"t5"``, ``"llama"``, ``"torchvision-resnet"``,
            ``"generic"``, ...).
        architecture: the model's architecture (Hugging Face ``model_type``
            or the class name).
        blocks: ``(qualified_name, module)`` per block, in forward order; the
            qualified name is what ``model.get_submodule`` accepts.
        removable: indices that may be removed on their own. Some adapters add
            constraints on a combination (see ``remove_layers``).
        locations: ``(container_name, position)`` per block: the
            ``nn.ModuleList``/``nn.Sequential`` holding it and its position there.

    A BlockList is a snapshot: after surgery, call ``find_blocks`` again.
    """

    name: str
    adapter: str
    architecture: str
    blocks: Tuple[Tuple[str, nn.Module], ...]
    removable: Tuple[int, ...]
    locations: Tuple[Tuple[str, int], ...]

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[Tuple[str, nn.Module]]:
        return iter(self.blocks)

    def __getitem__(self, index: int) -> Tuple[str, nn.Module]:
        return self.blocks[index]

    @property
    def names(self) -> Tuple[str, ...]:
        """Qualified module names of the blocks, in forward order."""
        return tuple(name for name, _ in self.blocks)

    @property
    def modules(self) -> Tuple[nn.Module, ...]:
        """The block modules, in forward order."""
        return tuple(module for _, module in self.blocks)

    def index(self, qualified_name: str) -> int:
        """Index of the block whose qualified module name is ``qualified_name``."""
        for i, (name, _) in enumerate(self.blocks):
            if name == qualified_name:
                return i
        raise ValueError(f"{qualified_name!r} is not a block of {self.name!r}; its blocks are {list(self.names)}")

    def __repr__(self) -> str:
        return (f"BlockList(name={self.name!r}, adapter={self.adapter!r}, architecture={self.architecture!r}, "
                f"blocks={len(self.blocks)}, removable={list(self.removable)})")

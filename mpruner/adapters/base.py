"""The adapter interface: how one architecture exposes and loses its blocks.

An adapter wraps one model. It lists the model's stacks of blocks, says which
blocks may go, checks constraints on a combination of removals, and performs a
removal: delete the blocks from their containers, then repair whatever else
describes the model's depth (layer indices, config fields, shared biases).
Adapters never copy the model; ``remove_layers`` decides what they mutate.
"""
from __future__ import annotations

import abc
from typing import ClassVar, Dict, List, Sequence, Tuple

import torch.nn as nn

from .blocks import BlockList

# One stack: its name and the containers whose children are its blocks, in
# forward order. A multi-stage CNN has one stack spread over several containers.
Stack = Tuple[str, List[Tuple[str, nn.Module]]]
Plan = Dict[str, List[int]]


def join(prefix: str, name: str) -> str:
    """Qualified module name ``prefix.name``, without a leading dot at the root."""
    return f"{prefix}.{name}" if prefix else name


def is_block_container(module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList))


class Adapter(abc.ABC):
    """Base class. Subclasses set ``name`` and implement ``matches`` and ``stacks``."""

    name: ClassVar[str] = "?"

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    @abc.abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``'s structure."""

    def for_model(self, model: nn.Module) -> "Adapter":
        """The same adapter bound to another model of the same structure (a deep copy)."""
        return type(self)(model)

    def architecture(self) -> str:
        return type(self.model).__name__

    @abc.abstractmethod
    def stacks(self) -> List[Stack]:
        """The model's stacks of blocks, each with its containers in forward order."""

    def is_removable(self, block: nn.Module) -> bool:
        """Whether this block may be removed on its own (shape-preserving)."""
        return True

    def block_lists(self) -> List[BlockList]:
        lists = []
        for stack_name, containers in self.stacks():
            blocks, locations, removable = [], [], []
            for container_name, container in containers:
                # _modules, not named_children(): the latter skips a module
                # registered twice, which would shift every later index.
                for position, (child_name, block) in enumerate(container._modules.items()):
                    if block is None:
                        raise TypeError(f"{join(container_name, child_name)} is None; a block container "
                                        "must hold modules only")
                    if self.is_removable(block):
                        removable.append(len(blocks))
                    blocks.append((join(container_name, child_name), block))
                    locations.append((container_name, position))
            lists.append(BlockList(name=stack_name, adapter=self.name, architecture=self.architecture(),
                                   blocks=tuple(blocks), removable=tuple(removable),
                                   locations=tuple(locations)))
        return lists

    def check(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        """Reject a valid-per-index plan whose combination the architecture cannot take.

        Raises ValueError. Called before anything is copied or modified.
        """

    def apply(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        """Remove the planned blocks from ``self.model`` and repair it. Plan is validated."""
        self.before_removal(plan, lists)
        by_name = {bl.name: bl for bl in lists}
        for name, indices in plan.items():
            delete_blocks(self.model, by_name[name], indices)
        self.after_removal(plan, lists)

    def before_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        """Hook: move state out of blocks about to be deleted (T5's position bias)."""

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        """Hook: renumber layer indices, fix config fields."""


def delete_blocks(model: nn.Module, block_list: BlockList, indices: Sequence[int]) -> None:
    """Delete blocks from their containers, last first so earlier positions stay valid.

    ``del`` on ``nn.Sequential``/``nn.ModuleList`` renumbers the remaining
    children 0..n-1, which is the layout a freshly built, shallower model has,
    so state-dict keys of a pruned model match those of its rebuilt twin.
    """
    for index in sorted(indices, reverse=True):
        container_name, position = block_list.locations[index]
        del model.get_submodule(container_name)[position]


def kept_indices(length: int, removed: Sequence[int]) -> List[int]:
    """Old indices of the blocks that survive, in order."""
    gone = set(removed)
    return [i for i in range(length) if i not in gone]

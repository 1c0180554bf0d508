"""Which modules ``analyze`` hooks: a block list, an attribute path, or module names."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch.nn as nn

from ..adapters import BlockList, find_blocks
from ..adapters.generic import did_you_mean
from ..moved import forward_names


@dataclass(frozen=True)
class LayerSelection:
    """The hooked modules in forward order, their qualified names, and where they came from."""

    names: Tuple[str, ...]
    modules: Tuple[nn.Module, ...]
    source: str          # block-list name, attribute path, or "custom"

    def __len__(self) -> int:
        return len(self.names)


def _detected(model: nn.Module) -> List[BlockList]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a guessed container is only listed here
            return find_blocks(model)
    except TypeError:
        return []


def _available(model: nn.Module) -> str:
    lists = _detected(model)
    if not lists:
        from ..adapters.registry import block_containers

        containers = ", ".join(f"{p!r} ({n} blocks)" for p, n in block_containers(model))
        return (f"mpruner detects no block list in {type(model).__name__}; pass layers='<attribute path of an "
                "nn.Sequential/nn.ModuleList>' or a list of module names"
                + (f" (its containers: {containers})" if containers else ""))
    return "available block lists: " + ", ".join(f"{bl.name!r} ({len(bl)} blocks)" for bl in lists)


def _from_block_list(block_list: BlockList) -> LayerSelection:
    if len(block_list) == 0:
        raise ValueError(f"block list {block_list.name!r} is empty; there is nothing to analyse")
    return LayerSelection(block_list.names, block_list.modules, block_list.name)


def resolve_layers(model: nn.Module, layers: Union[str, Sequence[str], BlockList] = "auto",
                  argument: str = "layers") -> LayerSelection:
    """Resolve the ``layers`` argument of ``analyze`` for ``model``.

    ``"auto"`` is the first block list ``find_blocks`` reports (T5: the encoder);
    a string is a block-list name (``"decoder.block"``) or the attribute path of an
    ``nn.Sequential``/``nn.ModuleList`` (``"features"``); a list names modules
    (``["encoder.layer.0", "encoder.layer.3"]``), which are analysed in that order.
    """
    if isinstance(layers, BlockList):
        layers = layers.name
    if layers == "auto":
        lists = find_blocks(model)  # raises TypeError saying how to name the blocks
        return _from_block_list(lists[0])
    if isinstance(layers, str):
        for block_list in _detected(model):
            if block_list.name == layers:
                return _from_block_list(block_list)
        try:
            module = model.get_submodule(layers)
        except AttributeError:
            raise ValueError(f"{argument}={layers!r}: {type(model).__name__} has no block list or submodule of "
                             f"that name{did_you_mean(model, layers)}; {_available(model)}") from None
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"{argument}={layers!r} is a {type(module).__name__}, not a block list or an "
                             f"nn.Sequential/nn.ModuleList; pass a list of module names to hook single modules "
                             f"({argument}=[{layers!r}, ...]); {_available(model)}")
        return _from_block_list(find_blocks(model, path=layers)[0])
    if isinstance(layers, (list, tuple)) and layers:
        return _from_names(model, layers, argument)
    raise TypeError(f"{argument} must be 'auto', a block-list name, an attribute path, or a non-empty list of "
                    f"module names; got {layers!r}")


def _from_names(model: nn.Module, layers: Sequence, argument: str) -> LayerSelection:
    by_id = {id(m): name for name, m in model.named_modules()}
    names, modules = [], []
    for item in layers:
        if isinstance(item, nn.Module):
            if id(item) not in by_id:
                raise ValueError(f"{argument}: a {type(item).__name__} module in the list is not part of the model")
            name, module = by_id[id(item)], item
        elif isinstance(item, str):
            try:
                module = model.get_submodule(item)
            except AttributeError:
                raise ValueError(f"{argument}: {type(model).__name__} has no submodule {item!r}"
                                 f"{did_you_mean(model, item)}; {_available(model)}") from None
            name = item
        else:
            raise TypeError(f"{argument} lists {type(item).__name__}; list module names (str) or modules")
        names.append(name)
        modules.append(module)
    seen = set()
    for name, module in zip(names, modules):
        if id(module) in seen:
            raise ValueError(f"{argument} names the module {name!r} twice (or two names of one module); "
                             "each layer must appear once")
        seen.add(id(module))
    return LayerSelection(tuple(names), tuple(modules), "custom")


# Renamed in 0.2 (a second public select_layers lived in mpruner.prune.cluster).
__getattr__ = forward_names(__name__, {"select_layers": ("mpruner.analysis.layers", "resolve_layers")})

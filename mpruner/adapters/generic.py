"""Any ``nn.Sequential`` / ``nn.ModuleList`` named by attribute path.

The generic adapter knows nothing of the model around the container, so it
fixes no config and renumbers nothing. It recognises common residual-block
conventions to refuse shape-changing blocks; a block of unknown structure is
assumed to keep its input's shape, which the caller must make sure of.
"""
from __future__ import annotations

import difflib
from typing import List, Sequence

import torch.nn as nn

from .base import Adapter, is_block_container


def keeps_shape(block: nn.Module) -> bool:
    """Whether a block of a known residual convention has an identity shortcut."""
    if hasattr(block, "downsample"):  # torchvision / timm ResNet blocks
        return block.downsample is None
    if isinstance(getattr(block, "shortcut", None), nn.Module):  # Hugging Face ResNet layers
        return isinstance(block.shortcut, nn.Identity)
    if isinstance(getattr(block, "use_res_connect", None), bool):  # torchvision MobileNet
        return block.use_res_connect
    args = getattr(block, "_block_args", None)  # EfficientNet MBConv
    if args is not None and hasattr(args, "stride"):
        strides = [args.stride] if isinstance(args.stride, int) else list(args.stride)
        return all(s == 1 for s in strides) and args.input_filters == args.output_filters
    return True


def did_you_mean(model: nn.Module, name: str) -> str:
    """`` (did you mean 'a', 'b'?)`` with the module names of ``model`` closest to ``name``, or ``""``."""
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def check_paths(model: nn.Module, paths: Sequence[str]) -> List[str]:
    """Validate attribute paths of block containers; return them as a list."""
    if isinstance(paths, str):
        paths = [paths]
    paths = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"path must be a string or a list of strings naming nn.Sequential/nn.ModuleList "
                        f"attributes, e.g. path='features'; got {paths!r}")
    if len(set(paths)) != len(paths):
        raise ValueError(f"path lists a container twice: {paths}")
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"path {path!r}: {type(model).__name__} has no submodule {path!r}"
                             f"{did_you_mean(model, path)}") from None
        if not is_block_container(module):
            raise ValueError(f"path {path!r} is a {type(module).__name__}; it must name an nn.Sequential "
                             f"or nn.ModuleList whose children are the blocks")
    return paths


class GenericAdapter(Adapter):
    name = "generic"

    def __init__(self, model: nn.Module, paths: Sequence[str] = ("",)):
        super().__init__(model)
        self.paths = check_paths(model, paths)

    @classmethod
    def matches(cls, model) -> bool:
        return is_block_container(model)

    def for_model(self, model: nn.Module) -> "GenericAdapter":
        return GenericAdapter(model, self.paths)

    def stacks(self):
        return [(path, [(path, self.model.get_submodule(path))]) for path in self.paths]

    def is_removable(self, block: nn.Module) -> bool:
        return keeps_shape(block)

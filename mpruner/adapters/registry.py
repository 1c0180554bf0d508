"""The one registry of architectures: the lookup that picks an adapter for a model, ``find_blocks``,
and the family traits other stages read (:func:`family_traits`)."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch.nn as nn

from ..stacklevel import user_stacklevel
from .base import Adapter, is_block_container, join
from .cnn import EfficientNetLiteAdapter, HFResNetAdapter, TorchvisionResNetAdapter
from .gemma import GemmaAdapter
from .generic import GenericAdapter
from .hf_common import HFAdapter, hf_model_type
from .hf_decoders import GPT2Adapter, LlamaAdapter
from .hf_encoders import BertAdapter, DistilBertAdapter, ViTAdapter
from .mixtral import MixtralAdapter
from .phi3 import Phi3Adapter
from .qwen3 import Qwen3Adapter
from .t5 import T5Adapter
from .traits import FamilyTraits

# Tried in order; the first whose `matches` accepts the model wins.
ADAPTERS = (BertAdapter, DistilBertAdapter, ViTAdapter, LlamaAdapter, MixtralAdapter, GemmaAdapter, Qwen3Adapter,
            Phi3Adapter, GPT2Adapter, T5Adapter, HFResNetAdapter, TorchvisionResNetAdapter, EfficientNetLiteAdapter)

SUPPORTED_HF_MODEL_TYPES = tuple(t for a in ADAPTERS for t in getattr(a, "model_types", ()))

__all__ = ["ADAPTERS", "SUPPORTED_HF_MODEL_TYPES", "adapter_for_model_type", "block_containers", "detect_adapter",
           "family_traits", "find_blocks", "resolve_adapter", "width_model_types"]


def _by_model_type() -> Dict[str, Type[HFAdapter]]:
    table: Dict[str, Type[HFAdapter]] = {}
    for adapter_class in ADAPTERS:
        for model_type in getattr(adapter_class, "model_types", ()):
            # First registration wins, as in detect_adapter; the registry tests insist on one.
            table.setdefault(model_type, adapter_class)
    return table


_BY_MODEL_TYPE = _by_model_type()


def _model_type(model_or_type) -> Optional[str]:
    if isinstance(model_or_type, str):
        return model_or_type
    # Duck-typed on config.model_type (not hf_model_type): a wrapper module that carries a
    # Hugging Face config is judged by its family too.
    model_type = getattr(getattr(model_or_type, "config", None), "model_type", None)
    return model_type if isinstance(model_type, str) else None


def adapter_for_model_type(model_type: str) -> Optional[Type[HFAdapter]]:
    """The adapter class registered for a Hugging Face ``model_type``, else None."""
    return _BY_MODEL_TYPE.get(model_type)


def family_traits(model_or_type) -> Optional[FamilyTraits]:
    """What the registry knows of a model's Hugging Face family (by ``config.model_type``), or of a
    ``model_type`` string: its adapter, whether it expects a BOS token, its width layout.

    None for a model without a ``config.model_type`` or of a family no adapter registers.
    """
    model_type = _model_type(model_or_type)
    adapter_class = None if model_type is None else adapter_for_model_type(model_type)
    if adapter_class is None:
        return None
    return FamilyTraits(model_type=model_type, family=adapter_class.name, expects_bos=adapter_class.expects_bos,
                        width=adapter_class.width_layout, adapter=adapter_class, causal_lm=adapter_class.causal_lm,
                        residual_projection=adapter_class.residual_projection)


def width_model_types() -> Tuple[str, ...]:
    """The ``model_type`` values whose adapter declares a width layout, in registry order."""
    return tuple(t for t, a in _BY_MODEL_TYPE.items() if a.width_layout is not None)


def block_containers(model: nn.Module) -> List[Tuple[str, int]]:
    """``(attribute path, number of blocks)`` of every outermost ``nn.Sequential``/``nn.ModuleList``
    of two or more children in ``model`` (containers inside them are their blocks' own parts)."""
    found: List[Tuple[str, int]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = join(prefix, name)
            if is_block_container(child) and len(child) >= 2:
                found.append((path, len(child)))
            else:
                walk(path, child)

    walk("", model)
    return found


_GUESSED: set = set()  # (model class, container) pairs already announced


def _how_to_name(containers: List[Tuple[str, int]]) -> str:
    listed = ", ".join(f"{path!r} ({n} blocks)" for path, n in containers)
    example = containers[0][0]
    return (f"{listed}. Name the one that holds its blocks: layers={example!r} "
            f"(command line: --layers {example}), or find_blocks(model, path={example!r})")


def detect_adapter(model: nn.Module) -> Optional[Adapter]:
    """The adapter of a recognised architecture, else None (no generic fallback)."""
    for adapter_class in ADAPTERS:
        if adapter_class.matches(model):
            return adapter_class(model)
    return None


def resolve_adapter(model: nn.Module, path: Optional[Union[str, Sequence[str]]] = None) -> Adapter:
    """Pick the adapter for ``model``: the generic one on ``path``, else by architecture.

    Raises TypeError when nothing recognises the model, saying how to name its blocks.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if path is not None:
        return GenericAdapter(model, path)
    adapter = detect_adapter(model)
    if adapter is not None:
        return adapter
    if GenericAdapter.matches(model):
        return GenericAdapter(model, [""])
    wrapped = getattr(model, "module", None)
    if isinstance(wrapped, nn.Module) and detect_adapter(wrapped) is not None:
        raise TypeError(f"{type(model).__name__} wraps a {type(wrapped).__name__}; pass the wrapped model "
                        f"(model.module) instead of the wrapper")
    model_type = hf_model_type(model)
    containers = block_containers(model)
    if model_type is not None:
        where = ("its nn.Sequential/nn.ModuleList containers: " + _how_to_name(containers) if containers
                 else "name its block container, e.g. path='model.layers'")
        raise TypeError(f"no mpruner adapter for Hugging Face model_type {model_type!r} "
                        f"(supported: {', '.join(SUPPORTED_HF_MODEL_TYPES)}); {where}. Note that the generic "
                        f"adapter does not fix the config, so save_pretrained/from_pretrained will not reload it.")
    if len(containers) == 1:
        # One candidate: it can only be the block list. Say so (once per class), since it was a guess.
        path, n = containers[0]
        if (type(model), path) not in _GUESSED:
            _GUESSED.add((type(model), path))
            warnings.warn(f"no mpruner adapter recognises {type(model).__name__}; using its only nn.Sequential/"
                          f"nn.ModuleList of two or more blocks, {path!r} ({n} blocks)", UserWarning,
                          stacklevel=user_stacklevel())
        return GenericAdapter(model, [path])
    if containers:
        raise TypeError(f"no mpruner adapter recognises {type(model).__name__}, and it has "
                        f"{len(containers)} nn.Sequential/nn.ModuleList containers: {_how_to_name(containers)}.")
    raise TypeError(f"no mpruner adapter recognises {type(model).__name__}, and it has no nn.Sequential/"
                    f"nn.ModuleList of two or more blocks. Put its blocks in one and name it "
                    f"(layers='blocks', command line --layers blocks), or list the modules to analyse: "
                    f"layers=['block1', 'block2'] (--layers block1,block2).")


def find_blocks(model: nn.Module, path: Optional[Union[str, Sequence[str]]] = None) -> list:
    """Return the block lists of ``model`` as a list of :class:`BlockList`.

    Args:
        model: the network. Recognised architectures: Hugging Face BERT,
            RoBERTa, DistilBERT, T5 (encoder and decoder stacks), LLaMA,
            Mistral, Qwen2, Qwen3, Mixtral, Gemma, Gemma 2, Phi-3, GPT-2, ViT and
            ResNet (``SUPPORTED_HF_MODEL_TYPES``); torchvision-style ResNet;
            EfficientNet-Lite; a bare ``nn.Sequential``/``nn.ModuleList``; any
            other model with exactly one ``nn.Sequential``/``nn.ModuleList`` of
            two or more blocks (used with a ``UserWarning`` naming it).
        path: attribute path of an ``nn.Sequential``/``nn.ModuleList`` to use
            instead of auto-detection (``"features"``), or a list of them. The
            returned lists then come from the generic adapter, which cannot
            check that a block keeps its input's shape.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or no adapter recognises
            it, no ``path`` was given and it has no single block container
            (the message lists the candidates).
        ValueError: ``path`` does not name an ``nn.Sequential``/``nn.ModuleList``.
    """
    return resolve_adapter(model, path).block_lists()

"""Architecture adapters: the one registry of architectures.

One module per family of architectures; each adapter both *finds* the block lists
(``find_blocks``, used by analysis to place its hooks) and *removes* blocks from them
(used by surgery), so that "block 3" means the same thing to both. A Hugging Face adapter
also declares, as plain class attributes, what other stages need to know of its family
(:mod:`.traits`): ``expects_bos`` (``perplexity`` prepends a BOS token to every window) and
``width_layout`` (how ``mpruner.width.prune_width`` prunes and repairs it). Those stages look a
model up with :func:`family_traits` and never name a family themselves.

Adding an architecture is one file here: a module with one adapter class (for a LLaMA-style
decoder, a subclass of :class:`~.hf_decoders.LlamaStyleAdapter` that sets ``name``,
``model_types``, ``expects_bos`` and, where width pruning has been tested on it,
``width_layout``), plus its line in ``ADAPTERS`` in :mod:`.registry` and its import below.
Each ``model_type`` belongs to one adapter; the registry tests check it.
"""
from .base import Adapter
from .blocks import BlockList
from .cnn import EfficientNetLiteAdapter, HFResNetAdapter, TorchvisionResNetAdapter
from .gemma import GemmaAdapter
from .generic import GenericAdapter
from .hf_decoders import GPT2Adapter, LlamaAdapter, LlamaStyleAdapter
from .hf_encoders import BertAdapter, DistilBertAdapter, ViTAdapter
from .mixtral import MixtralAdapter
from .phi3 import Phi3Adapter
from .qwen3 import Qwen3Adapter
from .t5 import T5Adapter
from .registry import (ADAPTERS, SUPPORTED_HF_MODEL_TYPES, adapter_for_model_type, detect_adapter, family_traits,
                       find_blocks, resolve_adapter, width_model_types)
from .traits import AttentionLayout, FamilyTraits, WidthLayout

__all__ = ["ADAPTERS", "SUPPORTED_HF_MODEL_TYPES", "Adapter", "AttentionLayout", "BlockList", "FamilyTraits",
           "GenericAdapter", "LlamaStyleAdapter", "WidthLayout", "adapter_for_model_type", "detect_adapter", "family_traits", "find_blocks",
           "resolve_adapter", "width_model_types"] + [a.__name__ for a in ADAPTERS]

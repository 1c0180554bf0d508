"""Architecture adapters: where a model keeps its blocks, and how to remove them.

One module per family of architectures; each adapter both *finds* the block lists
(``find_blocks``, used by analysis to place its hooks) and *removes* blocks from them
(used by surgery), so that "block 3" means the same thing to both.
A new architecture is one new adapter class here, added to ``ADAPTERS`` in
:mod:`.registry`.
"""
from .base import Adapter
from .blocks import BlockList
from .cnn import EfficientNetLiteAdapter, HFResNetAdapter, TorchvisionResNetAdapter
from .generic import GenericAdapter
from .hf_decoders import GPT2Adapter, LlamaAdapter
from .hf_encoders import BertAdapter, DistilBertAdapter, ViTAdapter
from .t5 import T5Adapter
from .registry import (ADAPTERS, SUPPORTED_HF_MODEL_TYPES, adapter_for_model_type, detect_adapter, family_traits,
                       find_blocks, resolve_adapter, width_model_types)
from .traits import AttentionLayout, FamilyTraits, WidthLayout

__all__ = ["ADAPTERS", "SUPPORTED_HF_MODEL_TYPES", "Adapter", "AttentionLayout", "BlockList", "FamilyTraits",
           "GenericAdapter", "WidthLayout", "adapter_for_model_type", "detect_adapter", "family_traits", "find_blocks",
           "resolve_adapter", "width_model_types"] + [a.__name__ for a in ADAPTERS]

"""Hugging Face encoders: BERT, RoBERTa, DistilBERT, ViT."""
from __future__ import annotations

from typing import Sequence

from .blocks import BlockList
from .base import Plan
from .hf_common import HFAdapter
from .traits import WidthLayout


class BertAdapter(HFAdapter):
    """BERT and RoBERTa: ``[bert.]encoder.layer``, ``config.num_hidden_layers``.

    Self-attention carries ``layer_idx`` (used when the model runs as a decoder
    with a cache); the base class renumbers it.
    """

    name = "bert"
    model_types = ("bert", "roberta")
    container_suffixes = ("encoder.layer",)
    # A plain Linear graph: Torch-Pruning traces the whole model. The config derives the head
    # size from hidden_size / num_attention_heads, so heads go only with hidden channels.
    width_layout = WidthLayout(mlp_roots=(".intermediate.dense",), mlp_width_field="intermediate_size",
                               hidden_routine="prune_hidden_bert", trace_whole_model=True)


class DistilBertAdapter(HFAdapter):
    """DistilBERT: ``distilbert.transformer.layer``, ``config.n_layers``."""

    name = "distilbert"
    model_types = ("distilbert",)
    container_suffixes = ("transformer.layer",)

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        super().after_removal(plan, lists)
        # The Transformer module keeps its own copy of the layer count.
        transformer = self.model.get_submodule(lists[0].name.rpartition(".")[0])
        if isinstance(transformer.__dict__.get("n_layers"), int):
            transformer.n_layers = len(transformer.layer)


class ViTAdapter(HFAdapter):
    """ViT: ``vit.layers`` (transformers >= 5) or ``vit.encoder.layer`` (4.x)."""

    name = "vit"
    model_types = ("vit",)
    container_suffixes = ("encoder.layer", "layers")

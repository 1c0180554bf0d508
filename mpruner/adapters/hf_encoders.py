"""Hugging Face encoders: BERT, RoBERTa, DistilBERT, ViT."""
from __future__ import annotations

from typing import Sequence

from .blocks import BlockList
from .base import Plan
from .hf_common import HFAdapter


class BertAdapter(HFAdapter):
    """BERT and RoBERTa: ``[bert.]encoder.layer``, ``config.num_hidden_layers``.

    Self-attention carries ``layer_idx`` (used when the model runs as a decoder
    with a cache); the base class renumbers it.
    """

    name = "bert"
    model_types = ("bert", "roberta")
    container_suffixes = ("encoder.layer",)


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

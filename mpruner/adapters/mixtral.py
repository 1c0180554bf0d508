"""Mixtral: a LLaMA-style decoder whose MLP is a sparse mixture of experts.

Depth surgery is LLaMA's. No width layout: each layer's ``mlp`` is a router over experts, with
no single up-projection whose channels are the MLP width, so ``prune_width`` refuses it.
"""
from __future__ import annotations

from .hf_decoders import LlamaStyleAdapter


class MixtralAdapter(LlamaStyleAdapter):
    name = "mixtral"
    model_types = ("mixtral",)
    expects_bos = True
    # No residual_projection: the MLP output is a router-weighted sum of experts' projections.

"""Qwen3: a LLaMA-style decoder with an RMSNorm on each head's queries and keys (``q_norm``,
``k_norm``, over ``head_dim``) and Qwen2's sliding-window layers (``layer_types``,
``max_window_layers``, the model's ``has_sliding_layers``), which the shared surgery renumbers.

The per-head norms act within a head, so whole heads, MLP channels and hidden channels prune
as in LLaMA: the family takes LLaMA's width layout.
"""
from __future__ import annotations

from .hf_decoders import LLAMA_WIDTH, LlamaStyleAdapter


class Qwen3Adapter(LlamaStyleAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
    expects_bos = True
    width_layout = LLAMA_WIDTH
    residual_projection = "mlp.down_proj"

"""Phi-3: a LLaMA-style decoder with fused projections (``self_attn.qkv_proj``,
``mlp.gate_up_proj``).

Depth surgery is LLaMA's. No width layout: a fused projection's output is split in the forward
(queries, keys, values; gate and up halves), which neither the MLP roots nor the head pruning of
LLaMA's layout describe.
"""
from __future__ import annotations

from .hf_decoders import LlamaStyleAdapter


class Phi3Adapter(LlamaStyleAdapter):
    name = "phi3"
    model_types = ("phi3",)
    expects_bos = True
    residual_projection = "mlp.down_proj"  # the MLP's output reaches the residual add unchanged

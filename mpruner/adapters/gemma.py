"""Gemma and Gemma 2: LLaMA-style decoders (``model.layers``; Gemma 2 alternates sliding and
full attention through ``layer_types``, which the shared surgery shrinks with the layers).

No width layout yet: the token embedding is scaled by sqrt(hidden_size), fixed when the model
is built, so after LLaMA's hidden-size routine a plain ``from_pretrained`` would rebuild it with
another scale than the pruned model runs with; and Gemma 2's extra pre/post-feed-forward norms
are not among the tensors that routine prunes.
"""
from __future__ import annotations

from .hf_decoders import LlamaStyleAdapter


class GemmaAdapter(LlamaStyleAdapter):
    name = "gemma"
    model_types = ("gemma", "gemma2")
    expects_bos = True
    # No residual_projection: Gemma 2 passes the MLP output through a post-feed-forward norm
    # before the residual add, so a linear map cannot be folded into down_proj.

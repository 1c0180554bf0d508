"""Hugging Face decoders: LLaMA, Mistral, Qwen2 and GPT-2, and the depth surgery every
LLaMA-style decoder shares (the other such families have a module each beside this one)."""
from __future__ import annotations

from typing import Sequence

from .blocks import BlockList
from .base import Plan, kept_indices
from .hf_common import HFAdapter
from .traits import AttentionLayout, WidthLayout


class LlamaStyleAdapter(HFAdapter):
    """Depth surgery of LLaMA-style decoders: ``model.layers``, ``config.num_hidden_layers``,
    ``config.layer_types``; ``self_attn.layer_idx`` addresses the KV cache.

    Not registered itself (it names no ``model_types``): each family subclasses it and declares
    its own traits, so that none inherits a width layout it was never tested with.
    """

    container_suffixes = ("layers",)
    causal_lm = True

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        super().after_removal(plan, lists)
        # Qwen2Model (and Qwen3Model) caches "any sliding layer left?" at construction; it
        # decides whether a sliding-window mask is built at all.
        for module in self.model.modules():
            if isinstance(module.__dict__.get("has_sliding_layers"), bool):
                layer_types = getattr(module.config, "layer_types", None) or ()
                module.has_sliding_layers = "sliding_attention" in layer_types


# The config carries head_dim, so heads shrink on their own and still reload. Each MLP is pruned
# on its own: tracing the rotary/GQA graph of the whole model takes minutes.
LLAMA_WIDTH = WidthLayout(mlp_roots=(".mlp.gate_proj",), mlp_width_field="intermediate_size",
                          hidden_routine="prune_hidden_llama", mlp_module=".mlp", mlp_marker="gate_proj",
                          mlp_output="down_proj", attention=AttentionLayout(".self_attn"), heads_shrink=True)


class LlamaAdapter(LlamaStyleAdapter):
    """LLaMA, Mistral and Qwen2."""

    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    expects_bos = True
    width_layout = LLAMA_WIDTH
    residual_projection = "mlp.down_proj"


class GPT2Adapter(HFAdapter):
    """GPT-2: ``transformer.h``, ``config.n_layer``; ``attn.layer_idx`` addresses the KV cache."""

    name = "gpt2"
    model_types = ("gpt2",)
    container_suffixes = ("h",)
    causal_lm = True
    residual_projection = "mlp.c_proj"  # a Conv1D: y = x W + b
    # GPT-2 never saw a BOS per document. Its fused c_attn output is split in the forward, which
    # Torch-Pruning cannot trace: each MLP is pruned on its own. n_embd / n_head is the head size,
    # so heads go only with hidden channels.
    width_layout = WidthLayout(mlp_roots=(".mlp.c_fc",), mlp_width_field="n_inner", hidden_routine="prune_hidden_gpt2",
                               mlp_module=".mlp", mlp_marker="c_fc", mlp_output="c_proj")

    def check(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        # With scale_attn_by_inverse_layer_idx, GPT2Attention fixes its scale
        # 1/(layer_idx+1) at construction. A kept block that moves to a new
        # index would keep its scale in memory but get another one when
        # from_pretrained rebuilds it: the reload would not match.
        if not getattr(self.model.config, "scale_attn_by_inverse_layer_idx", False):
            return
        (block_list,) = lists
        removed = plan.get(block_list.name, [])
        moved = [old for new, old in enumerate(kept_indices(len(block_list), removed)) if new != old]
        if moved:
            raise ValueError(
                f"indices: this GPT-2 has config.scale_attn_by_inverse_layer_idx=True, so each block's attention "
                f"scale depends on its position; removing {removed} would move blocks {moved} and a "
                f"save_pretrained/from_pretrained round trip would change their outputs. Only trailing blocks "
                f"can be removed from this model (e.g. [{len(block_list) - 1}]).")

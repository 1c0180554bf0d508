"""Hugging Face T5: an encoder stack and a decoder stack, each ``<stack>.block``.

Two things are T5-specific. The relative position bias of a stack lives in its
block 0 only (the stack passes the computed bias on to later blocks), so when
block 0 goes, its bias embedding moves to the new first block. And each stack
has its own deep copy of the config (``num_layers``), besides the model's
(``num_layers`` for the encoder, ``num_decoder_layers`` for the decoder).
"""
from __future__ import annotations

from typing import Sequence

from .blocks import BlockList
from .base import Plan, kept_indices
from .hf_common import HFAdapter, configs_of, find_container, renumber_layer_idx

STACK_SUFFIXES = ("encoder.block", "decoder.block")


class T5Adapter(HFAdapter):
    name = "t5"
    model_types = ("t5",)
    container_suffixes = ("encoder.block",)

    def stacks(self):
        found = [find_container(self.model, (suffix,)) for suffix in STACK_SUFFIXES]
        return [(name, [(name, container)]) for name, container in (f for f in found if f is not None)]

    def before_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        for block_list in lists:
            removed = plan.get(block_list.name, [])
            if 0 not in removed:
                continue
            first_kept = kept_indices(len(block_list), removed)[0]
            source = block_list.modules[0].layer[0].SelfAttention
            target = block_list.modules[first_kept].layer[0].SelfAttention
            target.relative_attention_bias = source.relative_attention_bias
            target.has_relative_attention_bias = True

    def after_removal(self, plan: Plan, lists: Sequence[BlockList]) -> None:
        sizes, decoder_config = {}, None
        for block_list in lists:
            container = self.model.get_submodule(block_list.name)
            renumber_layer_idx(list(container))
            role = _role(block_list.name)
            sizes[role] = len(container)
            if role == "decoder":
                decoder_config = self.model.get_submodule(block_list.name.rpartition(".")[0]).config
        for config in configs_of(self.model):
            if config is decoder_config:
                config.num_layers = sizes["decoder"]
            elif "encoder" in sizes:
                config.num_layers = sizes["encoder"]
            if "decoder" in sizes:
                config.num_decoder_layers = sizes["decoder"]


def _role(stack_name: str) -> str:
    return "decoder" if stack_name == "decoder.block" or stack_name.endswith(".decoder.block") else "encoder"


"""T5 (mpruner/adapters/t5.py): two stacks, each with its own config; the relative position
bias of a removed first block is handed to the new first block."""
import torch

from mpruner.surgery import remove_layers
from tests.helpers import surgery_models as zoo


def test_t5_stack_configs_and_relative_bias_handover():
    model, inputs = zoo.hf_model("t5")
    old_bias = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    pruned = remove_layers(model, {"encoder.block": [0], "decoder.block": [0, 2]})
    assert pruned.encoder.config.num_layers == 2 and pruned.decoder.config.num_layers == 2
    for stack in (pruned.encoder, pruned.decoder):
        first = stack.block[0].layer[0].SelfAttention
        assert first.has_relative_attention_bias
        assert not any(b.layer[0].SelfAttention.has_relative_attention_bias for b in stack.block[1:])
    assert torch.equal(pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight, old_bias)
    # Removing a later block leaves block 0 and its bias where they are.
    kept = remove_layers(model, {"decoder.block": [3]})
    assert kept.decoder.block[0].layer[0].SelfAttention.has_relative_attention_bias
    assert kept.config.num_layers == 3 and kept.config.num_decoder_layers == 3

"""Shared Hugging Face machinery (mpruner/adapters/hf_common.py): per-layer config entries
renumbered after a removal."""


def test_heterogeneous_per_layer_config_is_renumbered():
    import transformers as T

    from mpruner.adapters.hf_common import shrink_layer_config

    config = T.LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64,
                           per_layer_config={1: {"intermediate_size": 48}, 3: {"intermediate_size": 40}})
    shrink_layer_config(config, [1, 2, 3], 4)
    assert config.num_hidden_layers == 3
    assert [c.intermediate_size for c in config.per_layer_config] == [48, 64, 40]

"""LLaMA-style decoders and GPT-2 (mpruner/adapters/hf_decoders.py): Qwen2's sliding-window
switch after its sliding layers are gone; GPT-2 with a position-dependent attention scale
loses only trailing blocks."""
import pytest
import torch

from mpruner.surgery import remove_layers
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import assert_unchanged, output_of, snapshot


def test_qwen2_losing_all_sliding_layers_updates_the_mask_switch():
    model, inputs = zoo.hf_model("qwen2")
    assert model.model.has_sliding_layers
    pruned = remove_layers(model, [2, 3])
    assert pruned.config.layer_types == ["full_attention", "full_attention"]
    assert not pruned.model.has_sliding_layers and model.model.has_sliding_layers
    ids = inputs["input_ids"]
    cached = pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(cached, pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False))


def test_gpt2_with_position_dependent_attention_scale_only_loses_trailing_blocks(tmp_path):
    import transformers as T

    model_class, config, inputs = zoo.hf_case("gpt2")
    config.scale_attn_by_inverse_layer_idx = True
    model = model_class(config).eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx.*Only trailing blocks"):
        remove_layers(model, [1])
    assert_unchanged(model, before)
    pruned = remove_layers(model, [2, 3])
    pruned.save_pretrained(tmp_path)
    reloaded = T.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert torch.equal(output_of(reloaded, inputs), output_of(pruned, inputs))

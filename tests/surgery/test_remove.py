"""remove_layers and removable_layers (mpruner/surgery/remove.py) on tiny Hugging Face models of
every family find_blocks knows: exactly the blocks asked for go, the original is left as it
was, config and layer indices are fixed, save_pretrained -> from_pretrained and KV-cache
generation work. Family-specific surgery is in tests/adapters/."""
import pytest
import torch

from mpruner.adapters import find_blocks
from mpruner.surgery import get_record, removable_layers, remove_layers
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import assert_unchanged, n_params, output_of, snapshot

torch.set_num_threads(1)

# kind -> removal request. Qwen2 keeps layers 0 (full attention) and 3 (sliding).
PLANS = {
    "bert": [1, 2],
    "roberta": [0, 3],
    "distilbert": [1],
    "t5": {"encoder.block": [0], "decoder.block": [0, 2]},
    "llama": [1, 2],
    "mistral": [0],
    "qwen2": [1, 2],
    "gpt2": [0, 2],
    "vit": [1, 3],
    "hf-resnet": [1, 4],
}
DECODERS = ["t5", "llama", "mistral", "qwen2", "gpt2"]


def as_dict(plan, model):
    if isinstance(plan, dict):
        return plan
    (bl,) = find_blocks(model)
    return {bl.name: plan}


def removed_parameter_count(model, plan):
    lists = {bl.name: bl for bl in find_blocks(model)}
    total = 0
    for name, indices in as_dict(plan, model).items():
        for i in indices:
            total += sum(p.numel() for p in lists[name].modules[i].parameters())
            if model.config.model_type == "t5" and i == 0:
                # T5's relative position bias is handed to the new first block, not removed.
                total -= lists[name].modules[0].layer[0].SelfAttention.relative_attention_bias.weight.numel()
    return total


# --- Hugging Face models -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_remove_runs_drops_exactly_the_blocks_and_leaves_the_original(kind):
    model, inputs = zoo.hf_model(kind)
    before = snapshot(model)
    reference = output_of(model, inputs)
    pruned = remove_layers(model, PLANS[kind])
    assert pruned is not model
    assert_unchanged(model, before)
    assert output_of(model, inputs).equal(reference)
    assert output_of(pruned, inputs).shape == reference.shape
    assert n_params(model) - n_params(pruned) == removed_parameter_count(model, PLANS[kind])
    after = {bl.name: len(bl) for bl in find_blocks(pruned)}
    expected = {bl.name: len(bl) - len(as_dict(PLANS[kind], model).get(bl.name, [])) for bl in find_blocks(model)}
    assert after == expected
    assert get_record(pruned)["steps"] == [as_dict(PLANS[kind], model)]
    assert get_record(model) is None


def test_kept_blocks_are_the_original_modules_in_order():
    model, _ = zoo.hf_model("llama")
    pruned = remove_layers(model, [1, 2])
    for new, old in zip(pruned.model.layers, [model.model.layers[0], model.model.layers[3]]):
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))


EXPECTED_CONFIG = {
    "bert": {"num_hidden_layers": 2},
    "roberta": {"num_hidden_layers": 2},
    "distilbert": {"n_layers": 3},
    "t5": {"num_layers": 2, "num_decoder_layers": 2},
    "llama": {"num_hidden_layers": 2},
    "mistral": {"num_hidden_layers": 3},
    "qwen2": {"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"],
              "max_window_layers": 1},
    "gpt2": {"n_layer": 2},
    "vit": {"num_hidden_layers": 2},
    "hf-resnet": {"depths": [2, 1]},
}


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_config_fields_and_layer_indices(kind):
    model, _ = zoo.hf_model(kind)
    pruned = remove_layers(model, PLANS[kind])
    saved = pruned.config.to_dict()
    for field, value in EXPECTED_CONFIG[kind].items():
        assert saved[field] == value, field
    for bl in find_blocks(pruned):
        for position, block in enumerate(bl.modules):
            for module in block.modules():
                if isinstance(module.__dict__.get("layer_idx"), int):
                    assert module.layer_idx == position


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_save_pretrained_then_from_pretrained_reloads_identically(kind, tmp_path):
    model, inputs = zoo.hf_model(kind)
    pruned = remove_layers(model, PLANS[kind])
    pruned.save_pretrained(tmp_path)
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    reloaded.eval()
    assert torch.equal(output_of(reloaded, inputs), output_of(pruned, inputs))
    assert {bl.name: len(bl) for bl in find_blocks(reloaded)} == {bl.name: len(bl) for bl in find_blocks(pruned)}
    if kind in DECODERS:  # the reloaded model's KV cache is laid out for its own depth
        settings = dict(max_new_tokens=4, do_sample=False, use_cache=True)
        assert torch.equal(reloaded.generate(inputs["input_ids"], **settings),
                           pruned.generate(inputs["input_ids"], **settings))


@pytest.mark.parametrize("kind", DECODERS)
def test_generate_with_kv_cache_after_removal(kind):
    model, inputs = zoo.hf_model(kind)
    pruned = remove_layers(model, PLANS[kind])
    ids = inputs["input_ids"]
    settings = dict(max_new_tokens=6, do_sample=False, attention_mask=inputs["attention_mask"])
    cached = pruned.generate(ids, use_cache=True, **settings)
    assert torch.equal(cached, pruned.generate(ids, use_cache=False, **settings))
    assert cached.shape[1] == (1 if kind == "t5" else ids.shape[1]) + 6


def test_inplace_prunes_the_model_itself_and_not_a_sibling_sharing_its_config():
    model_class, config, inputs = zoo.hf_case("llama")
    torch.manual_seed(0)
    model, sibling = model_class(config).eval(), model_class(config).eval()
    sibling_out = output_of(sibling, inputs)
    result = remove_layers(model, [0, 3], inplace=True)
    assert result is model and len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    # The config object the two models were built from is not edited in place.
    assert config.num_hidden_layers == 4 and sibling.config.num_hidden_layers == 4
    assert torch.equal(output_of(sibling, inputs), sibling_out)
    assert output_of(model, inputs).shape == sibling_out.shape


def test_pruning_twice_records_both_steps(tmp_path):
    model, inputs = zoo.hf_model("bert")
    twice = remove_layers(remove_layers(model, [0]), [2])
    assert get_record(twice)["steps"] == [{"bert.encoder.layer": [0]}, {"bert.encoder.layer": [2]}]
    assert get_record(twice)["original"] == {"bert.encoder.layer": 4}
    assert twice.config.num_hidden_layers == 2
    twice.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(output_of(reloaded, inputs), output_of(twice, inputs))


def test_empty_request_removes_nothing():
    model, inputs = zoo.hf_model("bert")
    same = remove_layers(model, [])
    assert same is not model and len(same.bert.encoder.layer) == 4 and get_record(same) is None
    assert remove_layers(model, {}, inplace=True) is model


def test_removable_layers():
    model, _ = zoo.hf_model("t5")
    assert removable_layers(model) == {"encoder.block": [0, 1, 2], "decoder.block": [0, 1, 2, 3]}
    assert removable_layers(zoo.ResNet()) == {"layer1..layer4": [0, 1, 3, 5, 7]}
    assert removable_layers(zoo.ResNet(), path="layer2") == {"layer2": [1]}


def test_bad_arguments():
    model, _ = zoo.hf_model("bert")
    with pytest.raises(TypeError, match="inplace must be True or False"):
        remove_layers(model, [1], inplace="yes")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        remove_layers("model", [1])



"""remove_layers / removable_layers / save_pruned / load_pruned / model_stats on tiny models."""
import json
import os

import pytest
import torch
import torch.nn as nn

from tests.helpers import surgery_models as zoo
from mpruner.adapters import find_blocks
from mpruner.surgery import (get_record, load_pruned, model_stats, read_record, removable_layers, remove_layers,
                             save_pruned)

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


def snapshot(model):
    """Everything a failed or non-inplace removal must leave as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict() if hasattr(model, "config") else None
    return state, config, repr(model), dict(model.__dict__.get("_mpruner_surgery") or {})


def assert_unchanged(model, before):
    state, config, text, record = snapshot(model)
    assert text == before[2]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert config == before[1]
    assert record == before[3]


def output_of(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


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


def n_params(model):
    return sum(p.numel() for p in model.parameters())


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


def test_qwen2_losing_all_sliding_layers_updates_the_mask_switch():
    model, inputs = zoo.hf_model("qwen2")
    assert model.model.has_sliding_layers
    pruned = remove_layers(model, [2, 3])
    assert pruned.config.layer_types == ["full_attention", "full_attention"]
    assert not pruned.model.has_sliding_layers and model.model.has_sliding_layers
    ids = inputs["input_ids"]
    cached = pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(cached, pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False))


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


BAD_REQUESTS = [
    ("bert", [0, 1, 2, 3], ValueError, "remove all 4 blocks"),
    ("t5", {"decoder.block": [0, 1, 2, 3]}, ValueError, "remove all 4 blocks of 'decoder.block'"),
    ("bert", [4], ValueError, r"out of range .* 4 blocks \(valid indices 0..3\)"),
    ("bert", [-1], ValueError, "out of range"),
    ("bert", [1, 1], ValueError, r"\[1\] more than once"),
    ("bert", 1, TypeError, r"must be a list of block indices .* e.g. \[1, 3\]"),
    ("bert", "1", TypeError, "must be a list"),
    ("bert", [1.0], TypeError, "float"),
    ("bert", [True], TypeError, "bool"),
    ("bert", {"encoder.layer": [1]}, ValueError, r"no block list named 'encoder.layer'.*'bert.encoder.layer'"),
    ("t5", [1], ValueError, r"2 block lists .* pass a dict"),
    ("hf-resnet", [3], ValueError, r"resnet.encoder.stages.1.layers.0.*removable indices .*\[0, 1, 2, 4\]"),
    ("hf-resnet", [0, 1, 2], ValueError, "would empty stage"),
]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kind, indices, error, match", BAD_REQUESTS)
def test_bad_requests_raise_clearly_and_change_nothing(kind, indices, error, match, inplace):
    model, _ = zoo.hf_model(kind)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        remove_layers(model, indices, inplace=inplace)
    assert_unchanged(model, before)


def test_bad_arguments():
    model, _ = zoo.hf_model("bert")
    with pytest.raises(TypeError, match="inplace must be True or False"):
        remove_layers(model, [1], inplace="yes")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        remove_layers("model", [1])


def test_heterogeneous_per_layer_config_is_renumbered():
    import transformers as T

    from mpruner.adapters.hf_common import shrink_layer_config

    config = T.LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64,
                           per_layer_config={1: {"intermediate_size": 48}, 3: {"intermediate_size": 40}})
    shrink_layer_config(config, [1, 2, 3], 4)
    assert config.num_hidden_layers == 3
    assert [c.intermediate_size for c in config.per_layer_config] == [48, 64, 40]


# --- CNNs and generic containers (save_pruned / load_pruned) ---------------------------------------


def tv_resnet():
    torch.manual_seed(0)
    return zoo.randomize_batchnorm(zoo.ResNet().eval())


def test_torchvision_resnet_remove_save_load(tmp_path):
    model, image = tv_resnet(), torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    pruned = remove_layers(model, [1, 3, 7])
    assert_unchanged(model, before)
    assert n_params(model) - n_params(pruned) == removed_parameter_count_cnn(model, [1, 3, 7])
    assert [len(s) for s in (pruned.layer1, pruned.layer2, pruned.layer3, pruned.layer4)] == [1, 1, 2, 1]
    out = output_of(pruned, image)
    assert out.shape == (2, 10)

    save_pruned(pruned, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["model.safetensors", "mpruner.json"]
    record = json.loads((tmp_path / "ckpt" / "mpruner.json").read_text())
    assert record["steps"] == [{"layer1..layer4": [1, 3, 7]}] and record["adapter"] == "torchvision-resnet"
    assert read_record(tmp_path / "ckpt") == record
    reloaded = load_pruned(tmp_path / "ckpt", zoo.ResNet).eval()
    assert torch.equal(output_of(reloaded, image), out)


def removed_parameter_count_cnn(model, indices):
    (bl,) = find_blocks(model)
    return sum(p.numel() for i in indices for p in bl.modules[i].parameters())


def test_shape_changing_cnn_block_is_refused_with_the_removable_indices():
    model = tv_resnet()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"2 \(layer2.0\).*no identity shortcut.*\[0, 1, 3, 5, 7\]"):
        remove_layers(model, [1, 2])
    assert_unchanged(model, before)


def test_torchvision_resnet_stage_may_empty_when_all_its_blocks_keep_shape(tmp_path):
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    pruned = remove_layers(model, [0, 1])
    assert len(pruned.layer1) == 0 and output_of(pruned, image).shape == (1, 10)
    assert [len(bl) for bl in find_blocks(pruned)] == [6]
    save_pruned(pruned, tmp_path)
    assert torch.equal(output_of(load_pruned(tmp_path, zoo.ResNet).eval(), image), output_of(pruned, image))


def test_two_steps_replay_in_order(tmp_path):
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    step1 = remove_layers(model, [1])          # layer1.1
    step2 = remove_layers(step1, [4])          # what is now layer3.1
    assert get_record(step2)["steps"] == [{"layer1..layer4": [1]}, {"layer1..layer4": [4]}]
    save_pruned(step2, tmp_path)
    reloaded = load_pruned(tmp_path, zoo.ResNet).eval()
    assert [len(s) for s in (reloaded.layer1, reloaded.layer2, reloaded.layer3, reloaded.layer4)] == [1, 2, 1, 2]
    assert torch.equal(output_of(reloaded, image), output_of(step2, image))


def test_load_pruned_rejects_the_wrong_factory(tmp_path):
    save_pruned(remove_layers(tv_resnet(), [1]), tmp_path)
    with pytest.raises(ValueError, match="pruned from .*original, unpruned architecture"):
        load_pruned(tmp_path, lambda: zoo.ResNet(zoo.BasicBlock, (3, 2, 2, 2)))
    with pytest.raises(TypeError, match="must return a torch.nn.Module"):
        load_pruned(tmp_path, lambda: None)
    with pytest.raises(TypeError, match="callable"):
        load_pruned(tmp_path, "resnet")
    with pytest.raises(FileNotFoundError, match="save_pruned"):
        load_pruned(tmp_path / "missing", zoo.ResNet)


def test_load_pruned_reports_weights_that_do_not_fit(tmp_path):
    save_pruned(tv_resnet(), tmp_path)  # never pruned: just weights
    with pytest.raises(ValueError, match="do not fit"):
        load_pruned(tmp_path, lambda: zoo.ResNet(num_classes=7))


def test_load_pruned_into_an_instance(tmp_path):
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    pruned = remove_layers(model, [5])
    save_pruned(pruned, tmp_path)
    target = zoo.ResNet()
    assert load_pruned(tmp_path, target) is target
    assert torch.equal(output_of(target.eval(), image), output_of(pruned, image))


def test_efficientnet_lite_remove_save_load(tmp_path):
    model, image = zoo.efficientnet_lite0(), torch.randn(1, 3, 64, 64)
    before = snapshot(model)
    pruned = remove_layers(model, [2, 6, 13])
    assert_unchanged(model, before)
    assert len(pruned._blocks) == 13
    assert n_params(model) - n_params(pruned) == removed_parameter_count_cnn(model, [2, 6, 13])
    save_pruned(pruned, tmp_path)
    reloaded = load_pruned(tmp_path, zoo.efficientnet_lite0)
    assert torch.equal(output_of(reloaded, image), output_of(pruned, image))
    with pytest.raises(ValueError, match=r"removable indices of '_blocks': \[2, 4, 6, 7, 9, 10, 12, 13, 14\]"):
        remove_layers(model, [3])


class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, x):
        return x + self.body(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*[Residual(8) for _ in range(4)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x))


def test_generic_container_by_name(tmp_path):
    torch.manual_seed(0)
    model, x = Net(), torch.randn(3, 8)
    before = snapshot(model)
    pruned = remove_layers(model, {"features": [0, 2]})
    assert_unchanged(model, before)
    assert len(pruned.features) == 2 and output_of(pruned, x).shape == (3, 2)
    save_pruned(pruned, tmp_path)
    assert torch.equal(output_of(load_pruned(tmp_path, Net), x), output_of(pruned, x))
    by_index = remove_layers(model, [0])  # its only block container is taken (a UserWarning says so, once)
    assert len(by_index.features) == 3
    model.stem = nn.Sequential(nn.Linear(8, 8), nn.Tanh())  # two candidates: refused, both listed
    with pytest.raises(TypeError, match=r"no mpruner adapter recognises Net.*'features' \(4 blocks\), "
                                        r"'stem' \(2 blocks\).*--layers features"):
        remove_layers(model, [0])
    del model.stem
    with pytest.raises(ValueError, match="keys of indices must name"):
        remove_layers(model, {"head": [0]})
    with pytest.raises(ValueError, match="remove all 4 blocks"):
        remove_layers(model, {"features": [0, 1, 2, 3]})


def test_bare_sequential_list_form():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    pruned = remove_layers(model, [1])
    assert len(pruned) == 2 and len(model) == 3


def test_hugging_face_model_through_save_pruned(tmp_path):
    model, inputs = zoo.hf_model("gpt2")  # tied embeddings: stored once, restored shared
    pruned = remove_layers(model, [1])
    save_pruned(pruned, tmp_path)
    model_class, config, _ = zoo.hf_case("gpt2")
    reloaded = load_pruned(tmp_path, lambda: model_class(config)).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    assert torch.equal(output_of(reloaded, inputs), output_of(pruned, inputs))


# --- model_stats -----------------------------------------------------------------------------------


def test_model_stats_before_and_after():
    model, image = tv_resnet(), torch.randn(1, 3, 32, 32)
    model.train()
    model.layer1[0].bn1.eval()  # a module deliberately in another mode must keep it
    pruned = remove_layers(model, [1, 3])
    before, after = model_stats(model, image, repeats=3), model_stats(pruned, (image,), repeats=3)
    assert model.training and not model.layer1[0].bn1.training and model.layer1[1].bn1.training
    assert before.params == n_params(model)
    assert before.params - after.params == removed_parameter_count_cnn(model, [1, 3])
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert before.weight_bytes == 4 * before.params + buffers
    # Removed: layer1.1 (8->8 channels on 8x8) and layer2.1 (16->16 on 4x4), two 3x3 convs each.
    assert before.macs - after.macs == 2 * (8 * 8 * 8 * 8 * 9) + 2 * (4 * 4 * 16 * 16 * 9)
    assert before.latency_ms > 0 and after.latency_ms > 0
    assert set(before.to_dict()) == {"params", "macs", "latency_ms", "weight_bytes"}
    assert "params" in str(before)


def test_model_stats_keyword_inputs_and_arguments():
    model, inputs = zoo.hf_model("bert")
    stats = model_stats(model, inputs, measure_latency=False)
    assert stats.macs > 0 and stats.latency_ms != stats.latency_ms  # NaN when not measured
    with pytest.raises(ValueError, match="repeats"):
        model_stats(model, inputs, repeats=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        model_stats(None, inputs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_prune_save_load_and_stats(tmp_path):
    model, image = tv_resnet().cuda(), torch.randn(2, 3, 32, 32, device="cuda")
    pruned = remove_layers(model, [1, 5])
    assert next(pruned.parameters()).is_cuda
    save_pruned(pruned, tmp_path)
    reloaded = load_pruned(tmp_path, lambda: zoo.ResNet().cuda()).eval()
    assert torch.equal(output_of(reloaded, image), output_of(pruned, image))
    stats = model_stats(pruned, image, repeats=3)
    assert stats.latency_ms > 0 and stats.params == n_params(pruned)

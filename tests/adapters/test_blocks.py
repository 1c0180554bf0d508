"""find_blocks and BlockList: every adapter, forward order, the generic path, errors."""
import pytest
import torch
import torch.nn as nn

from tests.helpers.surgery_models import Bottleneck, ResNet, efficientnet_lite0, hf_model
from mpruner.adapters import BlockList, find_blocks

torch.set_num_threads(1)

# kind -> (adapter, {block list name: (count, removable indices)})
HF_EXPECTED = {
    "bert": ("bert", {"bert.encoder.layer": (4, [0, 1, 2, 3])}),
    "roberta": ("bert", {"encoder.layer": (4, [0, 1, 2, 3])}),
    "distilbert": ("distilbert", {"transformer.layer": (4, [0, 1, 2, 3])}),
    "t5": ("t5", {"encoder.block": (3, [0, 1, 2]), "decoder.block": (4, [0, 1, 2, 3])}),
    "llama": ("llama", {"model.layers": (4, [0, 1, 2, 3])}),
    "mistral": ("llama", {"model.layers": (4, [0, 1, 2, 3])}),
    "qwen2": ("llama", {"model.layers": (4, [0, 1, 2, 3])}),
    "gpt2": ("gpt2", {"transformer.h": (4, [0, 1, 2, 3])}),
    "vit": ("vit", {"vit.layers": (4, [0, 1, 2, 3])}),
    # stage 0 keeps width 8 (all identity shortcuts); stage 1 widens to 16 in its block 0 (index 3).
    "hf-resnet": ("hf-resnet", {"resnet.encoder.stages": (5, [0, 1, 2, 4])}),
}


def summary(lists):
    return {bl.name: (len(bl), list(bl.removable)) for bl in lists}


def forward_order(model, lists, inputs):
    """Qualified names of the blocks in the order their forward hooks fire."""
    fired, handles = [], []
    for bl in lists:
        for name, module in bl:
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: fired.append(name)))
    with torch.no_grad():
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    for handle in handles:
        handle.remove()
    return fired


@pytest.mark.parametrize("kind", sorted(HF_EXPECTED))
def test_hugging_face_block_lists(kind):
    model, inputs = hf_model(kind)
    lists = find_blocks(model)
    adapter, expected = HF_EXPECTED[kind]
    assert summary(lists) == expected
    assert all(bl.adapter == adapter for bl in lists)
    assert all(bl.architecture == model.config.model_type for bl in lists)
    for bl in lists:
        for name, module in bl:
            assert model.get_submodule(name) is module
    # The list order is the forward order (T5: encoder stack, then decoder stack).
    assert forward_order(model, lists, inputs) == [name for bl in lists for name in bl.names]


def test_torchvision_resnet_blocks_are_one_flat_list_across_stages():
    model = ResNet().eval()
    (bl,) = find_blocks(model)
    assert (bl.name, bl.adapter, bl.architecture) == ("layer1..layer4", "torchvision-resnet", "ResNet")
    assert bl.names == ("layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1")
    # First blocks of layer2..4 downsample; layer1's keep width 8 at stride 1.
    assert list(bl.removable) == [0, 1, 3, 5, 7]
    assert bl.locations[3] == ("layer2", 1)
    assert forward_order(model, [bl], torch.randn(1, 3, 32, 32)) == list(bl.names)


def test_torchvision_resnet_bottleneck_first_block_widens():
    (bl,) = find_blocks(ResNet(Bottleneck, (2, 1, 1, 2)))
    assert len(bl) == 6 and list(bl.removable) == [1, 5]


def test_efficientnet_lite_blocks():
    model = efficientnet_lite0()
    (bl,) = find_blocks(model)
    assert (bl.name, bl.adapter, len(bl)) == ("_blocks", "efficientnet-lite", 16)
    # Blocks that repeat a stage (stride 1, same width) may go; stage openers may not.
    assert list(bl.removable) == [2, 4, 6, 7, 9, 10, 12, 13, 14]
    assert forward_order(model, [bl], torch.randn(1, 3, 64, 64)) == list(bl.names)


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.features = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])
        self.heads = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    def forward(self, x):
        x = self.features(self.stem(x))
        for head in self.heads:
            x = head(x)
        return x


def test_generic_path_names_a_container():
    model = Tower()
    (bl,) = find_blocks(model, path="features")
    assert (bl.name, bl.adapter, bl.names, list(bl.removable)) == (
        "features", "generic", ("features.0", "features.1", "features.2"), [0, 1, 2])
    assert summary(find_blocks(model, path=["features", "heads"])) == {"features": (3, [0, 1, 2]),
                                                                      "heads": (2, [0, 1])}


def test_generic_path_overrides_detection_and_checks_residual_blocks():
    # A torchvision ResNet stage named by path: the shortcut rule still applies.
    (bl,) = find_blocks(ResNet(), path="layer2")
    assert bl.adapter == "generic" and list(bl.removable) == [1]


def test_bare_sequential_is_its_own_block_list():
    (bl,) = find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert bl.name == "" and bl.names == ("0", "1")


@pytest.mark.parametrize("path, error, match", [
    ("nope", ValueError, "no submodule 'nope'"),
    ("stem", ValueError, "must name an nn.Sequential"),
    (3, TypeError, "path must be a string"),
    (["features", "features"], ValueError, "twice"),
])
def test_bad_path(path, error, match):
    with pytest.raises(error, match=match):
        find_blocks(Tower(), path=path)


def test_unrecognised_model_says_how_to_name_blocks():
    with pytest.raises(TypeError, match=r"path='features'"):
        find_blocks(Tower())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_blocks("bert")


def test_wrapper_points_to_the_wrapped_model():
    wrapper = nn.DataParallel(ResNet())
    with pytest.raises(TypeError, match=r"pass the wrapped model \(model.module\)"):
        find_blocks(wrapper)


def test_unsupported_hugging_face_model_type():
    import transformers as T

    model = T.ElectraModel(T.ElectraConfig(hidden_size=32, embedding_size=32, num_attention_heads=2,
                                           num_hidden_layers=2, intermediate_size=64, vocab_size=50))
    with pytest.raises(TypeError, match="model_type 'electra'"):
        find_blocks(model)
    (bl,) = find_blocks(model, path="encoder.layer")
    assert len(bl) == 2


def test_block_list_api():
    model = ResNet()
    (bl,) = find_blocks(model)
    assert isinstance(bl, BlockList)
    assert len(bl) == 8 and bl[0] == ("layer1.0", model.layer1[0])
    assert [name for name, _ in bl] == list(bl.names)
    assert bl.modules[2] is model.layer2[0]
    assert bl.index("layer3.1") == 5
    with pytest.raises(ValueError, match="not a block"):
        bl.index("fc")
    assert "layer1..layer4" in repr(bl) and "removable=[0, 1, 3, 5, 7]" in repr(bl)
    with pytest.raises(Exception):
        bl.name = "other"  # frozen: a snapshot, not a handle to mutate

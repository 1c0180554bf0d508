"""Which modules analyze hooks (mpruner/analysis/layers.py): the block list of every
architecture find_blocks knows, on tiny random models; module names in the given order;
unknown names refused with the block lists there are."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from mpruner import find_blocks
from mpruner.analysis import analyze
from tests.helpers.analysis_models import TokenNet, mlp
from tests.helpers.surgery_models import VOCAB, ResNet, hf_model, randomize_batchnorm

torch.set_num_threads(1)

TEXT = ("bert", "roberta", "distilbert", "llama", "mistral", "qwen2", "gpt2")


def text_batches(sizes=(5, 4), T=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for B in sizes:
        ids = torch.randint(3, VOCAB, (B, T), generator=gen)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1:, T - 3:] = 0  # right padding
        out.append({"input_ids": torch.where(mask.bool(), ids, 0), "attention_mask": mask})
    return out


def image_batches(size, sizes=(5, 4), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, size, size, generator=gen) for B in sizes]


def check(model, result, block_list):
    L = len(block_list)
    assert result.cka.shape == (L, L) and result.layer_names == list(block_list.names)
    assert result.options["layers"] == block_list.name
    assert torch.isfinite(result.cka).all()
    assert torch.allclose(result.cka, result.cka.T, atol=1e-9)
    assert torch.allclose(torch.diagonal(result.cka), torch.ones(L, dtype=torch.float64), atol=1e-9)
    assert not model.training and not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("kind", TEXT)
@pytest.mark.parametrize("view", ["mean", "tokens"])
def test_text_models(kind, view):
    model, _ = hf_model(kind)
    result = analyze(model, text_batches(), view=view, progress=False)
    check(model, result, find_blocks(model)[0])
    assert result.num_samples == 9


def test_decoder_last_token_with_left_padding():
    model, _ = hf_model("llama")
    batches = text_batches()
    for b in batches:  # move the padding to the left, as decoders are usually fed
        b["input_ids"] = b["input_ids"].roll(3, 1) * (b["attention_mask"].roll(3, 1) > 0)
        b["attention_mask"] = b["attention_mask"].roll(3, 1)
    result = analyze(model, batches, view="last_token", progress=False)
    check(model, result, find_blocks(model)[0])


@pytest.mark.parametrize("layers, expected", [("auto", "encoder.block"), ("encoder.block", "encoder.block"),
                                              ("decoder.block", "decoder.block")])
def test_t5_stacks(layers, expected):
    model, _ = hf_model("t5")
    batches = text_batches()
    for b in batches:
        b["decoder_input_ids"] = b["input_ids"][:, :5]
    result = analyze(model, batches, layers=layers, progress=False)
    (block_list,) = [bl for bl in find_blocks(model) if bl.name == expected]
    check(model, result, block_list)


@pytest.mark.parametrize("layers", ["encoder.block", "decoder.block"])
def test_t5_plain_text_batches_feed_both_stacks(layers):
    # Batches with only input_ids/attention_mask (what data.text_batches gives): the text goes
    # to the decoder too, as `mpruner analyze` does, instead of transformers' "specify exactly
    # one of input_ids or inputs_embeds".
    model, _ = hf_model("t5")
    result = analyze(model, text_batches(), layers=layers, view="mean", progress=False)
    (block_list,) = [bl for bl in find_blocks(model) if bl.name == layers]
    check(model, result, block_list)


@pytest.mark.parametrize("kind, size", [("vit", 16), ("hf-resnet", 32)])
def test_hf_vision_models(kind, size):
    model, _ = hf_model(kind)
    result = analyze(model, [{"pixel_values": x} for x in image_batches(size)], progress=False)
    check(model, result, find_blocks(model)[0])


def test_vit_token_views():
    model, _ = hf_model("vit")
    batches = [{"pixel_values": x} for x in image_batches(16)]
    for view in ("cls", "tokens"):
        check(model, analyze(model, batches, view=view, progress=False), find_blocks(model)[0])


def test_torchvision_resnet_one_flat_list_across_stages():
    model = randomize_batchnorm(ResNet().eval())
    result = analyze(model, image_batches(32), progress=False)
    (block_list,) = find_blocks(model)
    check(model, result, block_list)
    assert result.layer_names[:3] == ["layer1.0", "layer1.1", "layer2.0"] and len(result.layer_names) == 8


def test_efficientnet_lite_blocks():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    # Default batch norm: _surgery_models' randomised statistics collapse late blocks to
    # near-constant outputs on noise images, whose CKA is undefined.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=64, num_classes=10).eval()
    result = analyze(model, image_batches(64), progress=False)
    (block_list,) = find_blocks(model)
    check(model, result, block_list)
    assert block_list.name == "_blocks" and len(result.layer_names) == 16


def test_sequential_by_attribute_path():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(3)]))
    result = analyze(model, [torch.randn(6, 6)], layers="1", progress=False)
    assert result.layer_names == ["1.0", "1.1", "1.2"] and result.options["layers"] == "1"


def test_layers_by_module_names_keep_the_given_order(gen):
    model = mlp()
    xs = [torch.randn(8, 12, generator=gen) for _ in range(2)]
    full = analyze(model, xs, progress=False)
    some = analyze(model, xs, layers=["3", "0", "4"], progress=False)
    assert some.layer_names == ["3", "0", "4"] and some.options["layers"] == "custom"
    np.testing.assert_allclose(some.cka.numpy(), full.cka[[3, 0, 4]][:, [3, 0, 4]].numpy(), atol=1e-12)


def test_unknown_layers_list_the_block_lists(gen):
    from tests.helpers.surgery_models import hf_model

    model, _ = hf_model("t5")
    with pytest.raises(ValueError, match=r"'encoder\.blocks'.*available block lists: 'encoder\.block' \(3 blocks\), "
                                         r"'decoder\.block' \(4 blocks\)"):
        analyze(model, [{}], layers="encoder.blocks", progress=False)
    with pytest.raises(ValueError, match=r"no submodule 'layers\.9'"):
        analyze(TokenNet(), [{}], layers=["layers.0", "layers.9"], progress=False)
    with pytest.raises(ValueError, match=r"'embed' is a Embedding, not a block list"):
        analyze(TokenNet(), [{}], layers="embed", progress=False)
    two = TokenNet()
    two.extra = nn.ModuleList([nn.Identity(), nn.Identity()])
    with pytest.raises(TypeError, match=r"no mpruner adapter recognises TokenNet.*'layers' \(4 blocks\), "
                                        r"'extra' \(2 blocks\).*--layers layers"):
        analyze(two, [{}], progress=False)
    with pytest.raises(ValueError, match=r"did you mean 'layers'"):
        analyze(TokenNet(), [{}], layers="layer", progress=False)
    with pytest.raises(ValueError, match="twice"):
        analyze(TokenNet(), [{}], layers=["layers.0", "layers.0"], progress=False)

"""Residual CNNs (mpruner/adapters/cnn.py): a torchvision-style ResNet and EfficientNet-Lite lose
only blocks whose input and output shapes match; removal, save_pruned and load_pruned."""
import json
import os

import pytest
import torch

from mpruner.adapters import find_blocks
from mpruner.surgery import load_pruned, read_record, remove_layers, save_pruned
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import (assert_unchanged, n_params, output_of, removed_parameter_count_cnn,
                                          snapshot, tv_resnet)


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
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["README.md", "model.safetensors", "mpruner.json"]  # + model card
    record = json.loads((tmp_path / "ckpt" / "mpruner.json").read_text())
    assert record["steps"] == [{"layer1..layer4": [1, 3, 7]}] and record["adapter"] == "torchvision-resnet"
    assert read_record(tmp_path / "ckpt") == record
    reloaded = load_pruned(tmp_path / "ckpt", zoo.ResNet).eval()
    assert torch.equal(output_of(reloaded, image), out)


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

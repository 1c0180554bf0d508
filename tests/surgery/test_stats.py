"""model_stats (mpruner/surgery/stats.py): parameters, MACs, weight bytes and latency of a
model before and after removal, the model's modes kept, latency in human units."""
import pytest
import torch

from mpruner.surgery import model_stats, remove_layers
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import n_params, removed_parameter_count_cnn, tv_resnet


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


def test_latency_in_human_units():
    from mpruner.surgery.stats import ModelStats, format_ms

    assert format_ms(1120.0) == "1.12 s" and format_ms(12.34) == "12.3 ms" and format_ms(0.5) == "500 µs"
    assert "latency 1.12 s" in str(ModelStats(10, 20, 1120.0, 40))

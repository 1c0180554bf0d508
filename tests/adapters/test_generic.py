"""Any nn.Sequential / nn.ModuleList named by attribute path (mpruner/adapters/generic.py),
or the only one a model has."""
import pytest
import torch
import torch.nn as nn

from mpruner.surgery import load_pruned, remove_layers, save_pruned
from tests.helpers.surgery_models import assert_unchanged, output_of, snapshot


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

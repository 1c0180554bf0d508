"""A removal request is validated (mpruner/surgery/plan.py) before anything is copied or
modified: every bad request raises clearly and leaves the model as it was."""
import pytest

from mpruner.surgery import remove_layers
from tests.helpers import surgery_models as zoo
from tests.helpers.surgery_models import assert_unchanged, snapshot

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

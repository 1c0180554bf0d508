"""Pipeline's acceptance in both tolerance modes, with fractional metrics and exact ties on the
bound: the expected verdict is the rule written out here (absolute: metric >= before - tol;
relative: metric >= before * (1 - tol)), on values exact in binary so a tie is a tie."""
import pytest
import torch
import torch.nn as nn

import mpruner
from mpruner import sparsity

BEFORE, TOL = 0.75, 0.125  # absolute bound 0.625, relative bound 0.65625: both exact in binary
CASES = [  # (metric of the sparse stage, accepted absolute, accepted relative)
    (0.75, True, True),
    (0.65625, True, True),            # the relative bound itself: a tie is accepted
    (0.640625, True, False),          # between the bounds: the two modes differ
    (0.625, True, False),             # the absolute bound itself
    (0.6249999999999999, False, False),
    (float("nan"), False, False),     # a broken evaluation is never accepted
]


class Scripted:
    """evaluate(): the original's metric, then the scripted one for the stage's candidate."""

    def __init__(self, stage_metric):
        self.values = [BEFORE, stage_metric]

    def __call__(self, model):
        return self.values.pop(0)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("metric,absolute,relative", CASES)
@pytest.mark.parametrize("mode", ["absolute", "relative", "auto"])
def test_each_mode_accepts_by_its_own_bound(mode, metric, absolute, relative):
    want = relative if mode == "relative" else absolute  # auto: absolute for the pipeline's higher-is-better metric
    calib = [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    model = net()
    result = mpruner.Pipeline(model, calib, Scripted(metric), depth=False, sparsity=0.5, tolerance=TOL,
                              tolerance_mode=mode, progress=False, wanda_kwargs={"layers": ["0.0", "1.0"]}).run()
    dense, stage = result.stages
    assert dense.metric == BEFORE and stage.name == "sparsity"
    assert stage.accepted is want
    assert sparsity.has_masks(result.model) is want  # the model returned is the candidate only when accepted
    assert result.metric_after == (metric if want else BEFORE)
    assert not sparsity.has_masks(model)

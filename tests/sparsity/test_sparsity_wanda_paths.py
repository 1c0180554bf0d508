"""mpruner.sparsity.wanda's own paths: the early stop of each sequential pass, batch limits and a
custom forward in both modes, precomputed norms, the progress bar; results against the one-pass
and truncated-data computations they must equal."""
import re

import pytest
import torch
import torch.nn as nn

from mpruner import sparsity
from mpruner.sparsity.wanda import collect_norms

from .test_sparsity_inputs import exact

# Net holds its blocks in one nn.Sequential, which find_blocks uses with a warning saying so
pytestmark = pytest.mark.filterwarnings("ignore:no mpruner adapter recognises Net")


class Net(nn.Module):
    """Three Linear blocks and a head outside them. Every forward pass that gets past the blocks
    logs whether the second-to-last block was already sparse, in this model and in every copy
    wanda makes of it (the log sits in a closure, which deep copies share)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])
        self.head = nn.Linear(8, 2)
        log = []
        self._record = lambda value: log.append(value)
        self.full_passes = log

    @property
    def head_calls(self):
        return len(self.full_passes)

    def forward(self, x):
        out = self.blocks(x)
        self._record(hasattr(self.blocks[-2][0], "weight_mask"))
        return self.head(out)


def data(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 8, generator=g) for _ in range(n)]


def zeros(model):
    return {name: (sparsity.layers.effective_weight(m) == 0).nonzero().tolist()
            for name, m in model.named_modules() if hasattr(m, "weight_mask")}


def test_each_sequential_pass_stops_after_its_block_but_the_last():
    model, batches = Net(), data(2)
    sparsity.wanda(model, batches, progress=False)
    # only the last block's pass (2 batches) runs to the head, after the earlier blocks are sparse
    assert model.full_passes == [True, True]


def test_max_batches_in_both_modes_equals_the_truncated_data():
    for sequential in (True, False):
        model, batches = Net(), data(3)
        limited = sparsity.wanda(model, batches, sequential=sequential, max_batches=1, progress=False)
        assert zeros(limited) == zeros(sparsity.wanda(Net(), batches[:1], sequential=sequential, progress=False))
        assert zeros(limited) != zeros(sparsity.wanda(Net(), batches, sequential=sequential, progress=False))
    model = Net()
    sparsity.wanda(model, data(3), max_batches=1, progress=False)
    assert model.head_calls == 1


@pytest.mark.parametrize("sequential", [True, False])
def test_a_custom_forward_is_used_in_both_modes(sequential):
    batches = data(2)
    wrapped = [{"inputs": b} for b in batches]  # not a name Net.forward takes: only the custom call works
    out = sparsity.wanda(Net(), wrapped, sequential=sequential, forward=lambda m, b: m(b["inputs"]), progress=False)
    assert zeros(out) == zeros(sparsity.wanda(Net(), batches, sequential=sequential, progress=False))


def test_one_pass_keeps_the_fraction_asked_for():
    out = sparsity.wanda(Net(), data(2), sparsity=0.25, sequential=False, progress=False)
    assert all(len(z) == 8 * 2 for z in zeros(out).values())  # 2 of 8 per row, 8 rows


def test_a_pattern_sets_the_fraction():
    out = sparsity.wanda(Net(), data(2), pattern="1:4", progress=False)
    assert all(len(z) == 8 * 6 for z in zeros(out).values())  # 3 of every 4: 6 of 8 per row


def test_precomputed_norms_equal_the_one_pass():
    model, batches = Net(), data(2)
    names = [n for _, group in sparsity.target_layers(model) for n in group]
    norms = collect_norms(model, batches, names)
    given = sparsity.wanda(model, [batches[0]], sequential=False, norms=norms, progress=False)
    assert zeros(given) == zeros(sparsity.wanda(Net(), batches, sequential=False, progress=False))


def test_precomputed_norms_word_for_word_errors():
    model = Net()
    names = [n for _, group in sparsity.target_layers(model) for n in group]
    assert names == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    with pytest.raises(ValueError, match=exact(
            "norms= are statistics of one model state; they need sequential=False")):
        sparsity.wanda(model, data(1), norms={}, progress=False)
    wide = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8)) for _ in range(6)])
    wide_names = [n for _, group in sparsity.target_layers(wide) for n in group]
    with pytest.raises(ValueError, match=exact(  # 5 missing, 4 named
            f"norms= lacks layers {wide_names[1:5]}; collect them for every layer Wanda prunes")):
        sparsity.wanda(wide, data(1), sequential=False, norms={wide_names[0]: torch.ones(8)}, progress=False)


def test_the_progress_bar_counts_blocks(capsys):
    sparsity.wanda(Net(), data(1))  # progress=True is the default
    err = capsys.readouterr().err
    assert re.search(r"wanda: 100%.*\b3/3 \[.*\d(block/s|s/block)\]", err), err

"""mpruner.sparsity.wanda's own paths: the early stop of each sequential pass, batch limits and a
custom forward in both modes, precomputed norms, the progress bar; results against the one-pass
and truncated-data computations they must equal."""
import re

import pytest
import torch
import torch.nn as nn

from mpruner import sparsity
from mpruner.sparsity.wanda import collect_norms

# Net holds its blocks in one nn.Sequential, which find_blocks uses with a warning saying so
pytestmark = pytest.mark.filterwarnings("ignore:no mpruner adapter recognises Net")


class Net(nn.Module):
    """Three Linear blocks and a head outside them; ``head_calls`` counts the head's calls in this
    model and in every copy wanda makes of it (a closure, shared by deep copies)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(3)])
        self.head = nn.Linear(8, 2)
        calls = []
        self.head.register_forward_hook(lambda *_: calls.append(1))
        self._calls = calls

    @property
    def head_calls(self):
        return len(self._calls)

    def forward(self, x):
        return self.head(self.blocks(x))


def data(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 8, generator=g) for _ in range(n)]


def zeros(model):
    return {name: (sparsity.layers.effective_weight(m) == 0).nonzero().tolist()
            for name, m in model.named_modules() if hasattr(m, "weight_mask")}


def test_each_sequential_pass_stops_after_its_block_but_the_last():
    model, batches = Net(), data(2)
    sparsity.wanda(model, batches, progress=False)
    assert model.head_calls == 2  # only the last block's pass (2 batches) runs to the head


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
    wrapped = [{"x": b} for b in batches]
    out = sparsity.wanda(Net(), wrapped, sequential=sequential, forward=lambda m, b: m(b["x"]), progress=False)
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
    with pytest.raises(ValueError, match="^" + re.escape(
            "norms= are statistics of one model state; they need sequential=False") + "$"):
        sparsity.wanda(model, data(1), norms={}, progress=False)
    names = [n for _, group in sparsity.target_layers(model) for n in group]
    wide = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8)) for _ in range(5)])
    wide_names = [n for _, group in sparsity.target_layers(wide) for n in group]
    with pytest.raises(ValueError, match="^" + re.escape(
            f"norms= lacks layers {wide_names[1:5]}; collect them for every layer Wanda prunes") + "$"):
        sparsity.wanda(wide, data(1), sequential=False, norms={wide_names[0]: torch.ones(8)}, progress=False)
    assert names == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]


def test_the_progress_bar_counts_blocks(capsys):
    sparsity.wanda(Net(), data(1))  # progress=True is the default
    err = capsys.readouterr().err
    assert re.search(r"wanda: 100%.*\b3/3 \[.*block", err), err

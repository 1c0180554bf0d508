"""mpruner.stacklevel: warnings raised deep inside mpruner point at the user's line."""
import warnings

import torch

import mpruner
from tests.helpers.caller_frame import warned_at_caller


# mpruner.stacklevel: warnings raised deep inside (analyze's sink, an adapter's guess) point
# at the user's line too, however many mpruner frames lie between.
def test_deep_warnings_point_at_the_caller():
    import torch.nn as nn

    class Stack(nn.Module):  # a fresh class: the adapter guess warns once per class
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))

        def forward(self, x):
            return self.blocks(x)

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        mpruner.find_blocks(Stack())
        mpruner.analyze(Stack(), [torch.randn(6, 3), torch.randn(1, 3)], layers="blocks", progress=False)
    messages = [w for w in record if "no mpruner adapter recognises" in str(w.message) or "skipped 1 batch" in
                str(w.message)]
    assert len(messages) == 2 and all(warned_at_caller(w, __file__) for w in messages), \
        [(str(w.message)[:40], w.filename) for w in record]

"""One global batch shared by the ranks of a data-parallel step (mpruner/training/batch_split.py)."""
import pytest
import torch

from mpruner.training.batch_split import split_batch


def test_split_batch_parts_and_weights():
    x = torch.arange(7.0)
    parts = [split_batch({"x": x}, r, 3) for r in range(3)]
    assert [p["x"].tolist() for p, _ in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [w for _, w in parts] == pytest.approx([9 / 7, 6 / 7, 6 / 7])
    part, weight = split_batch((x[:1], x[:1]), 1, 2)  # nothing left for rank 1: one sample, weight 0
    assert part[0].tolist() == [0.0] and weight == 0.0
    assert split_batch(x, 0, 1) == (x, 1.0)
    with pytest.raises(TypeError, match="cannot find the batch size of a str"):
        split_batch("text", 0, 2)

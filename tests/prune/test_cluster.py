"""Clusters of consecutive similar layers (mpruner/prune/cluster.py): anchor and adjacent
clustering, which members a granularity removes, the automatic threshold."""
import math

import pytest
import torch

import mpruner
from mpruner.prune import adjacent_similarities, auto_threshold


def _cka(adjacent):
    """A CKA matrix whose entries decay with distance, from given neighbour similarities."""
    L = len(adjacent) + 1
    m = torch.eye(L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1, L):
            v = 1.0
            for k in range(i, j):
                v *= adjacent[k]
            m[i, j] = m[j, i] = v
    return m


def test_cluster_anchor_vs_adjacent():
    m = _cka([0.99, 0.99, 0.5, 0.995, 0.9])
    # anchor: CKA(0,2) = 0.9801 >= 0.98 joins, CKA(3,4)=0.995 joins, CKA(3,5)=0.8955 does not
    assert mpruner.cluster_layers(m, 0.98) == [[0, 1, 2], [3, 4], [5]]
    assert mpruner.cluster_layers(m, 0.985) == [[0, 1], [2], [3, 4], [5]]
    assert mpruner.cluster_layers(m, 0.985, method="adjacent") == [[0, 1, 2], [3, 4], [5]]
    nan = m.clone()
    nan[0, 1] = nan[1, 0] = float("nan")
    assert mpruner.cluster_layers(nan, 0.98)[0] == [0]


def test_redundant_members_granularity():
    clusters = [[0, 1, 2, 3, 4], [5], [6, 7]]
    assert mpruner.redundant_members(clusters, 1) == [1, 2, 3, 4, 7]
    assert mpruner.redundant_members(clusters, 2) == [1, 3, 7]
    assert mpruner.redundant_members(clusters, 3) == [1, 4, 7]
    with pytest.raises(ValueError, match="granularity"):
        mpruner.redundant_members(clusters, 0)


def test_cluster_errors_and_auto_threshold():
    with pytest.raises(ValueError, match="square"):
        mpruner.cluster_layers(torch.ones(2, 3))
    with pytest.raises(ValueError, match="threshold"):
        mpruner.cluster_layers(torch.eye(3), 1.5)
    with pytest.raises(ValueError, match="method"):
        mpruner.cluster_layers(torch.eye(3), 0.9, method="kmeans")
    m = _cka([0.93, 0.967, 0.5])
    assert adjacent_similarities(m) == pytest.approx([0.93, 0.967, 0.5])
    assert auto_threshold(m) == pytest.approx(0.965)
    assert auto_threshold(_cka([0.5, 0.6])) == 0.9


def _chain(adjacent):
    L = len(adjacent) + 1
    m = torch.eye(L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1, L):
            m[i, j] = m[j, i] = math.prod(adjacent[i:j])
    return m


@pytest.mark.parametrize("method", ["anchor", "adjacent"])
def test_cluster_joins_at_exactly_the_threshold(method):
    m = _chain([0.5, 0.5])
    m[0, 1] = m[1, 0] = 0.75  # exactly representable: >= joins, > would not
    assert mpruner.cluster_layers(m, 0.75, method) == [[0, 1], [2]]
    assert mpruner.cluster_layers(m, 0.75 + 1e-12, method) == [[0], [1], [2]]


def test_auto_threshold_rounds_down_to_its_step():
    assert auto_threshold(_chain([0.9876, 0.5])) == pytest.approx(0.985)   # down, never up to 0.99
    assert auto_threshold(_chain([0.9876, 0.5]), step=0.01) == pytest.approx(0.98)
    assert auto_threshold(_chain([0.93, 0.5]), floor=0.95) == 0.95          # never below the floor
    # the rounded threshold still lets the most similar pair join
    m = _chain([0.9876, 0.5])
    assert mpruner.cluster_layers(m, auto_threshold(m)) == [[0, 1], [2]]
    assert auto_threshold(_chain([0.99, 0.999]), exclude=[2]) == pytest.approx(0.99)


def test_cluster_compares_in_float64():
    # 0.97999999 is below 0.98 in float64 but rounds up to 0.98000002 in float32.
    m = [[1.0, 0.97999999], [0.97999999, 1.0]]
    assert mpruner.cluster_layers(m, 0.98) == [[0], [1]]
    assert mpruner.cluster_layers(torch.tensor(m, dtype=torch.float64), 0.98) == [[0], [1]]


def test_cluster_and_select_defaults_and_threshold_range():
    m = _chain([0.985, 0.5])
    assert mpruner.cluster_layers(m) == mpruner.cluster_layers(m, 0.98) == [[0, 1], [2]]  # default 0.98
    assert mpruner.cluster_layers(torch.ones(3, 3), 1.0) == [[0, 1, 2]]                  # 1 is allowed
    for bad in (0, 0.0, -0.5, 1.0000001, "0.9"):
        with pytest.raises(ValueError, match="threshold"):
            mpruner.cluster_layers(m, bad)
    clusters = [[0, 1, 2, 3], [4, 5]]
    assert mpruner.redundant_members(clusters) == mpruner.redundant_members(clusters, 1) == [1, 2, 3, 5]


def test_auto_threshold_without_candidates_is_one():
    assert auto_threshold(torch.ones(1, 1)) == 1.0                      # a single layer: nothing to pair
    assert auto_threshold(_chain([0.99, 0.99]), exclude=[1, 2]) == 1.0   # every later layer excluded
    nan = _chain([0.99])
    nan[0, 1] = nan[1, 0] = float("nan")
    assert auto_threshold(nan) == 1.0

"""Fixtures of the pruning tests."""
import pytest

from tests.helpers import prune_job


@pytest.fixture(scope="module")
def job():
    """The small residual net, trained, and its calibration batches (tests/helpers/prune_job.py)."""
    model, train, _ = prune_job.build()
    return model, [x for x, _ in train]

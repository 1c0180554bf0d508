"""The loop's rank helpers in one process (no process group): pass-through values, and which
errors count as a lost rank."""
import pytest
import torch
import torch.nn as nn

from mpruner.analysis.placement import execution_device
from mpruner.distributed import Ranks, lost_contact


def test_one_process_passes_values_through():
    ranks = Ranks.current()
    assert (ranks.rank, ranks.world, ranks.is_main, ranks.active) == (0, 1, True, False)
    plan = (0.97, [[0, 1, 2]], [1])
    assert ranks.from_main(plan) is plan and ranks.metric(0.8125) == 0.8125
    with pytest.raises(RuntimeError, match="^Connection reset by peer$"):  # unchanged without other ranks
        with ranks.guard("ckpt"):
            raise RuntimeError("Connection reset by peer")


def test_lost_contact_tells_collective_failures_from_user_errors():
    assert lost_contact(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    assert lost_contact(RuntimeError("Timed out waiting 15000ms for recv operation to complete"))
    assert lost_contact(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)"))


def test_execution_device_skips_meta_weights():
    assert execution_device(nn.ReLU()) == torch.device("cpu")
    with torch.device("meta"):
        offloaded = nn.Linear(3, 3)
    assert execution_device(offloaded) == torch.device("cpu")  # never "meta"
    assert execution_device(nn.Linear(3, 3)) == torch.device("cpu")

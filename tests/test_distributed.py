"""mpruner.distributed: accumulators on several processes, summed with torch.distributed (gloo),
equal one process; rank 0's weights on every rank; shards of a batch stream; the loop's rank
helpers in one process (pass-through values, which errors count as a lost rank)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import mpruner
from mpruner.distributed import Ranks, Shard, lost_contact, resolve
from tests.helpers.layer_data import structured_layers


def _worker(rank, world, init_file, estimator, out_path):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        feats = structured_layers(torch.Generator().manual_seed(5), n=96, dims=(6, 8, 5))
        acc = mpruner.CKAAccumulator(estimator=estimator)
        for i in range(rank * 16, 96, world * 16):  # every rank its own shard of batches
            acc.update([f[i:i + 16] for f in feats])
        acc.all_reduce()
        if rank == 0:
            torch.save({"cka": acc.compute(), "samples": acc.num_samples, "batches": acc.num_batches}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator", ["minibatch", "exact"])
def test_all_reduce_matches_single_process(estimator, tmp_path):
    out = tmp_path / "result.pt"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), estimator, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    got = torch.load(out, weights_only=True)
    feats = structured_layers(torch.Generator().manual_seed(5), n=96, dims=(6, 8, 5))
    single = mpruner.CKAAccumulator(estimator=estimator)
    for i in range(0, 96, 16):
        single.update([f[i:i + 16] for f in feats])
    assert got["samples"] == 96 and got["batches"] == 6
    torch.testing.assert_close(got["cka"], single.compute(), rtol=0, atol=1e-12)


def _sync_worker(rank, world, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # every rank initialises its own, different weights
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    model[1].running_mean.normal_()
    mine = {k: v.clone() for k, v in model.state_dict().items()}
    Ranks(rank, world).sync_weights(model)
    torch.save({"before": mine, "after": model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_sync_weights_gives_every_rank_rank_0s_parameters_and_buffers(tmp_path):
    mp.start_processes(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any(not torch.equal(r0["before"][k], r1["before"][k]) for k in r0["before"])  # they did differ
    for key, value in r0["before"].items():
        assert torch.equal(r0["after"][key], value) and torch.equal(r1["after"][key], value), key


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


def test_shard_takes_every_world_th_batch():
    shards = [Shard(r, 3) for r in range(3)]
    assert [list(s.take(range(8))) for s in shards] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert [s.count(8) for s in shards] == [3, 3, 2] and Shard(2, 3).count(1) == 0


def test_resolve_without_a_process_group():
    assert resolve("auto") is None and resolve(False) is None
    with pytest.raises(RuntimeError, match="distributed=True.*torchrun"):
        resolve(True)
    with pytest.raises(ValueError, match="distributed must be 'auto', True or False"):
        resolve("yes")

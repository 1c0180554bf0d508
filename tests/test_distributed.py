"""Accumulators on several processes, summed with torch.distributed (gloo), equal one process."""
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mpruner

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


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "mpruner", "info"], capture_output=True, text=True, check=True).stdout
    for key in ("mpruner", "torch", "backends compiled", "CUDA version", "CUDA archs", "OpenMP"):
        assert key in out
    assert mpruner.__version__ in out

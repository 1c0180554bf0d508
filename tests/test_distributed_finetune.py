"""Finetuner on accelerate: 2 ranks (gloo, DDP) sharing each batch take the single-process
step on the whole batch; options that one process shares with them (accumulation, amp)."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import mpruner
from mpruner.prune.batch_split import split_batch


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def batches(sizes):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
            for n in sizes]


CASES = {  # name -> (batch sizes, Finetuner options)
    "one-step": ((8, 8), dict(max_steps=1)),
    "uneven-and-tiny": ((8, 7, 1, 5), dict(epochs=2)),
    "accumulation": ((8, 6, 8, 4, 8), dict(gradient_accumulation_steps=2)),
}


def train(name):
    sizes, options = CASES[name]
    model = net()
    loss = mpruner.Finetuner(batches(sizes), lr=1e-2, progress=False, **options)(model)
    return {"loss": loss, "params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "grads": {k: v.grad.clone() for k, v in model.named_parameters()}}


def _worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        torch.save({name: train(name) for name in CASES}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist-finetune")
    mp.start_processes(_worker, args=(2, _free_port(), str(d)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_take_the_single_process_steps(two_ranks, name):
    ref = train(name)
    for rank in range(2):
        got = two_ranks[rank][name]
        for key in ("grads", "params"):
            for param, value in ref[key].items():
                torch.testing.assert_close(got[key][param], value, rtol=0, atol=1e-12, msg=f"{key} {param} rank {rank}")
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-12)


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


def test_amp_on_and_off_in_one_process_leave_the_model_as_it_was():
    data = [(x.float(), y) for x, y in batches((8, 8))]
    model = net().float()
    mpruner.Finetuner(data, amp=True, progress=False)(model)   # bfloat16 autocast on the CPU
    assert "forward" not in vars(model) and "_original_forward" not in vars(model)
    mpruner.Finetuner(data, amp=False, progress=False)(model)  # another precision in the same process
    assert all(p.dtype == torch.float32 for p in model.parameters())
    copy.deepcopy(model)(data[0][0])


def test_bad_options():
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an integer >= 1"):
        mpruner.Finetuner([], gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="amp must be 'auto', True, False or one of"):
        mpruner.Finetuner([], amp="fp8")

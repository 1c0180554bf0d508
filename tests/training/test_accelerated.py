"""Finetuner on accelerate (mpruner/training/accelerated.py): 2 ranks (gloo, DDP) sharing each
batch take the single-process step on the whole batch; the same with fsdp=True (torch FSDP2 on
the CPU, each rank holding its shard); options that one process shares with them
(accumulation). The same two ranks evaluate: accuracy and perplexity sharded and summed, and a
failing rank fails the evaluation everywhere (one two-process run serves all these tests)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import mpruner
from tests.helpers.training_data import batches, net


CASES = {  # name -> (batch sizes, Finetuner options)
    "one-step": ((8, 8), dict(max_steps=1)),
    "uneven-and-tiny": ((8, 7, 1, 5), dict(epochs=2)),
    "accumulation": ((8, 6, 8, 4, 8), dict(gradient_accumulation_steps=2)),
}


def train(name, fsdp=None):
    sizes, options = CASES[name]
    model = net()
    loss = mpruner.Finetuner(batches(sizes), lr=1e-2, progress=False, fsdp=fsdp, **options)(model)
    out = {"loss": loss, "params": {k: v.detach().clone() for k, v in model.named_parameters()}}
    if fsdp is None:  # a sharded run trains a sharded copy: the plain model gets its weights, no gradients
        out["grads"] = {k: v.grad.clone() for k, v in model.named_parameters()}
    return out


class TinyLM(nn.Module):
    """(B, T) ids -> (B, T, V) logits: enough for perplexity's arithmetic."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.emb, self.out = nn.Embedding(11, 8), nn.Linear(8, 11)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)))


def evaluations(distributed):
    """Accuracy over 5 batches (an odd count: the ranks' shares differ) and perplexity over
    7 windows, as the CLI's evaluation computes them."""
    from mpruner.evaluation import accuracy

    calls = []
    model, lm = net(), TinyLM()
    for m in (model, lm):
        m.register_forward_hook(lambda *_: calls.append(1))
    acc = accuracy(model, batches((8, 7, 1, 5, 3)), distributed=distributed)
    ids = torch.randint(0, 11, (7 * 16 - 5,), generator=torch.Generator().manual_seed(4))
    ppl = mpruner.perplexity(lm, ids, seq_len=16, batch_size=1, progress=False, distributed=distributed)
    return {"accuracy": acc, "perplexity": ppl.perplexity, "tokens": ppl.tokens, "forwards": len(calls)}


def failing_evaluation(rank):
    """Rank 1's model raises in its forward: both ranks raise, neither waits for the other."""
    from mpruner.evaluation import accuracy

    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("broken forward")

    try:
        accuracy(Broken() if rank == 1 else net(), batches((4, 4)))
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return "no error"


FSDP = {"fsdp": True, "fsdp-root": {"wrap": "root", "reshard_after_forward": False}}


def _lm_batches():
    from tests.helpers.tiny_lms import VOCAB

    g = torch.Generator().manual_seed(6)
    out = []
    for B in (4, 3, 4):
        ids = torch.randint(3, VOCAB, (B, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def distill_train(fsdp=None):
    """Healing by distillation with the hidden term and accumulation: every rank runs the teacher on
    its own share of each batch."""
    from tests.helpers.tiny_lms import tiny_lm

    teacher = tiny_lm("llama", layers=4).double()
    student = mpruner.remove_layers(teacher, [1])
    loss = mpruner.Finetuner(_lm_batches(), lr=1e-2, progress=False, fsdp=fsdp, gradient_accumulation_steps=2,
                             distill=dict(teacher=teacher, alpha=0.5, hidden=0.5))(student)
    out = {"loss": loss, "params": {k: v.detach().clone() for k, v in student.named_parameters()}}
    if fsdp is None:
        out["grads"] = {k: v.grad.clone() for k, v in student.named_parameters()}
    return out


def _worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        results = {name: train(name) for name in CASES}
        for mode, fsdp in FSDP.items():
            results.update({f"{mode}/{name}": train(name, fsdp=fsdp) for name in CASES})
        results["distill"] = distill_train()
        results["fsdp/distill"] = distill_train(fsdp=True)
        results["eval"] = evaluations(distributed="auto")
        results["eval_failure"] = failing_evaluation(rank)
        from mpruner.training.sharded import shard_copy

        plain = net()
        replica = shard_copy(plain, {})
        results["local_numel"] = torch.tensor([p.to_local().numel() for p in replica.parameters()])
        results["plain_is_plain"] = all(type(p) is nn.Parameter for p in plain.parameters())
        torch.save(results, f"{out_dir}/rank{rank}.pt")
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


@pytest.mark.parametrize("mode", ["ddp"] + list(FSDP))
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_take_the_single_process_steps(two_ranks, name, mode):
    ref = train(name)
    key_of_run = name if mode == "ddp" else f"{mode}/{name}"
    for rank in range(2):
        got = two_ranks[rank][key_of_run]
        for key in ("grads", "params"):
            if key not in got:
                continue
            for param, value in ref[key].items():
                torch.testing.assert_close(got[key][param], value, rtol=0, atol=1e-12, msg=f"{key} {param} rank {rank}")
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-12)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_distill_as_one_process(two_ranks, mode):
    """Each rank's teacher on its share of the batch: the single-process healing step."""
    ref = distill_train()
    for rank in range(2):
        got = two_ranks[rank]["distill" if mode == "ddp" else "fsdp/distill"]
        for key in ("grads", "params"):
            for param, value in ref[key].items() if key in got else ():
                torch.testing.assert_close(got[key][param], value, rtol=0, atol=1e-10, msg=f"{key} {param} {rank}")
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-10)


def test_evaluation_is_sharded_and_summed(two_ranks):
    """Each rank scores its share of the batches; every rank returns the one-process value."""
    ref = evaluations(distributed=False)
    for rank in range(2):
        got = two_ranks[rank]["eval"]
        assert got["accuracy"] == ref["accuracy"] and got["tokens"] == ref["tokens"]
        assert got["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-13)
    # 5 + 7 forward passes in one process; rank 0 takes batches 0, 2, 4 and windows 0, 2, 4, 6
    assert ref["forwards"] == 12 and [two_ranks[r]["eval"]["forwards"] for r in range(2)] == [7, 5]


def test_a_failing_rank_fails_the_evaluation_everywhere(two_ranks):
    assert two_ranks[0]["eval_failure"] == "RuntimeError: evaluation failed on 1 of 2 ranks (their error is in " \
                                          "their own output)"
    assert two_ranks[1]["eval_failure"] == "ValueError: broken forward"


def test_fsdp_shards_a_copy(two_ranks):
    """Each rank holds about half of every parameter; the model handed in stays plain."""
    total = torch.tensor([p.numel() for p in net().parameters()])
    local = [two_ranks[r]["local_numel"] for r in range(2)]
    assert torch.equal(local[0] + local[1], total) and bool((local[0] < total).all())
    assert two_ranks[0]["plain_is_plain"] and two_ranks[1]["plain_is_plain"]

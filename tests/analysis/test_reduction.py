"""analyze over 2 processes (gloo): each rank its share of the batches, one all-reduce, the
single-process result on every rank for every view, kernel, estimator and other=."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mpruner.analysis import analyze
from mpruner.distributed import Shard

from tests.helpers.analysis_models import TokenNet, mlp, token_batches


def _dense_batches():
    g = torch.Generator().manual_seed(11)
    # 7 usable batches (4 on rank 0, 3 on rank 1) and a short one that the unbiased estimator skips.
    return [torch.randn(n, 12, generator=g) for n in (9, 8, 10, 8, 12, 9, 8, 3)]


def _other():
    model = mlp(seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return model


def cases():
    """name -> (model, batches, analyze kwargs); built identically in every process."""
    dense, tokens = _dense_batches(), token_batches(torch.Generator().manual_seed(2), sizes=(6, 5, 7, 4, 6))
    net = TokenNet()
    return {
        "mean-linear-unbiased": (mlp(), dense, {}),
        "mean-rbf-biased": (mlp(), dense, dict(kernel="rbf", unbiased=False)),
        "flatten": (mlp(), dense, dict(view="flatten")),
        "other": (mlp(), dense, dict(other=_other())),
        "max_batches": (mlp(), dense, dict(max_batches=5)),
        "one-batch": (mlp(), dense[:1], {}),   # rank 1's share is empty
        "tokens": (net, tokens, dict(layers="layers", view="tokens")),
        "tokens-other": (net, tokens, dict(layers="layers", view="tokens", other=TokenNet(seed=1))),
        "cls": (net, tokens, dict(layers="layers", view="cls")),
        "last_token": (net, tokens, dict(layers="layers", view="last_token")),
        "cosine": (net, tokens, dict(layers="layers", metric="cosine")),
        "angular-last": (net, tokens, dict(layers="layers", metric="angular", view="last_token")),
        "cka-block-inputs": (net, tokens, dict(layers="layers", view="tokens", block_inputs=True)),
    }


def _run_all(distributed):
    out = {}
    for name, (model, batches, kwargs) in cases().items():
        r = analyze(model, batches, progress=False, distributed=distributed, **kwargs)
        # options as JSON values, so the ranks' results load with torch.load(weights_only=True)
        influence = r.block_influence() if r.block_io is not None else None
        out[name] = {"cka": r.matrix, "influence": influence, "num_samples": r.num_samples, "options": json.loads(json.dumps(r.options, default=str)),
                     "names": (r.layer_names, r.other_layer_names)}
    return out


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result = {"sharded": _run_all("auto"), "every_batch": _run_all(False)}
        bad = _dense_batches()
        bad[3] = torch.full_like(bad[3], float("nan"))  # rank 1's second batch
        try:
            analyze(mlp(), bad, progress=False)
        except Exception as e:  # noqa: BLE001 - the message is the test
            result["failure"] = f"{type(e).__name__}: {e}"
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist-analysis")
    mp.start_processes(_worker, args=(2, str(d / "init"), str(d)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    return _run_all(False)


@pytest.mark.parametrize("name", list(cases()))
def test_sharded_equals_one_process_on_every_rank(two_ranks, single, name):
    ref = single[name]
    for rank in range(2):
        got = two_ranks[rank]["sharded"][name]
        torch.testing.assert_close(got["cka"], ref["cka"], rtol=0, atol=1e-12, equal_nan=True)
        if ref["influence"] is not None:
            torch.testing.assert_close(got["influence"], ref["influence"], rtol=0, atol=1e-12)
        assert got["num_samples"] == ref["num_samples"] and got["names"] == ref["names"]
        options = dict(got["options"])
        assert options.pop("world_size") == 2
        assert options == ref["options"]
    assert torch.equal(two_ranks[0]["sharded"][name]["cka"].nan_to_num(), two_ranks[1]["sharded"][name]["cka"].nan_to_num())


def test_distributed_false_runs_every_batch_on_every_rank(two_ranks, single):
    for rank in range(2):
        for name, ref in single.items():
            got = two_ranks[rank]["every_batch"][name]
            assert torch.equal(got["cka"].nan_to_num(), ref["cka"].nan_to_num()) and got["options"] == ref["options"]


def test_a_failing_rank_fails_every_rank(two_ranks):
    assert two_ranks[1]["failure"].startswith("ValueError: NaN or Inf in the output of")
    assert "in batch 3" in two_ranks[1]["failure"]  # the batch's index in the whole stream
    assert two_ranks[0]["failure"].startswith("RuntimeError: analyze failed on 1 of 2 ranks")


class CountingSink:
    """A sink outside mpruner's two, taking part through the three documented methods."""

    def __init__(self):
        self.sums, self.n = torch.arange(6, dtype=torch.float64).reshape(2, 3), 4

    def distributed_state(self):
        return [self.sums]

    def distributed_counts(self):
        return [self.n]

    def distributed_load(self, tensors, counts):
        self.sums, (self.n,) = tensors[0], counts


def test_other_sinks_join_through_three_methods(tmp_path):
    from mpruner.analysis.reduction import reduce_sink

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        sink = CountingSink()
        assert reduce_sink(Shard(0, 1), sink, seen=3) == 3
        assert sink.n == 4 and torch.equal(sink.sums, torch.arange(6, dtype=torch.float64).reshape(2, 3))
        with pytest.raises(TypeError, match="object cannot be summed over processes: give it distributed_state"):
            reduce_sink(Shard(0, 1), object(), seen=3)
    finally:
        dist.destroy_process_group()

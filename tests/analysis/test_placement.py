"""Where a model takes its inputs (mpruner/analysis/placement.py): analyze on models whose
blocks accelerate spread over devices or offload to disk gives the same CKA as the
undispatched model (on the CPU: cpu + disk maps, cpu_offload, disk_offload); meta weights
are never an execution device."""
import copy

import pytest
import torch
import torch.nn as nn

from mpruner.analysis import analyze
from mpruner.analysis.placement import execution_device
from tests.helpers.analysis_models import TokenNet, mlp, token_batches

try:
    import accelerate
except ImportError:
    accelerate = None
needs_accelerate = pytest.mark.skipif(accelerate is None, reason="could not import 'accelerate'")


def _dense():
    g = torch.Generator().manual_seed(4)
    return [torch.randn(n, 12, generator=g) for n in (9, 8, 10)]


def _dispatch(kind, model, tmp_path):
    if kind == "device_map":  # blocks alternate between the CPU and disk
        device_map = {name: ("disk" if i % 2 else "cpu") for i, (name, _) in enumerate(model.named_children())}
        return accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    if kind == "cpu_offload":
        return accelerate.cpu_offload(model, execution_device="cpu")
    return accelerate.disk_offload(model, str(tmp_path), execution_device="cpu")


@needs_accelerate
@pytest.mark.parametrize("kind", ["device_map", "cpu_offload", "disk_offload"])
def test_dispatched_mlp_gives_the_same_cka(kind, tmp_path):
    model = mlp()
    expected = analyze(copy.deepcopy(model), _dense(), progress=False)
    dispatched = _dispatch(kind, model, tmp_path)
    if kind == "disk_offload":
        assert all(p.device.type == "meta" for p in dispatched.parameters())
    assert execution_device(dispatched) == torch.device("cpu")
    got = analyze(dispatched, _dense(), progress=False)
    torch.testing.assert_close(got.cka, expected.cka, rtol=0, atol=1e-12)
    assert got.num_samples == expected.num_samples and got.layer_names == expected.layer_names


@needs_accelerate
def test_disk_offloaded_token_model_per_sequence(tmp_path):
    net, batches = TokenNet(), token_batches(torch.Generator().manual_seed(6))
    expected = analyze(copy.deepcopy(net), batches, layers="layers", view="tokens", progress=False)
    offloaded = accelerate.disk_offload(net, str(tmp_path), execution_device="cpu")
    got = analyze(offloaded, batches, layers="layers", view="tokens", progress=False)
    torch.testing.assert_close(got.cka, expected.cka, rtol=0, atol=1e-12)
    assert got.options["num_tokens"] == expected.options["num_tokens"]


@needs_accelerate
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_blocks_on_two_gpus_gather_on_the_cka_device():
    model = mlp()
    expected = analyze(copy.deepcopy(model), _dense(), progress=False)
    device_map = {name: i % 2 for i, (name, _) in enumerate(model.named_children())}
    dispatched = accelerate.dispatch_model(model, device_map=device_map)
    got = analyze(dispatched, _dense(), progress=False)  # CKA on cuda:0, inputs moved by the hooks
    torch.testing.assert_close(got.cka, expected.cka, rtol=0, atol=1e-5)


def test_execution_device_skips_meta_weights():
    assert execution_device(nn.ReLU()) == torch.device("cpu")
    with torch.device("meta"):
        offloaded = nn.Linear(3, 3)
    assert execution_device(offloaded) == torch.device("cpu")  # never "meta"
    assert execution_device(nn.Linear(3, 3)) == torch.device("cpu")

"""The Gram GEMM strategy (mpruner/engine/gram_strategy.py): measured once per shape and
cached, pinned by MPRUNER_GRAM, and the same CKA whichever strategy builds the Grams."""
import pytest
import torch

import mpruner
from mpruner.engine import gram_strategy as S

from tests.helpers.layer_data import structured_layers


@pytest.fixture(autouse=True)
def fresh_cache():
    S.clear()
    yield
    S.clear()


def _layers(gen, n=200):
    return [x.float() for x in structured_layers(gen, n=n, dims=(24, 24, 40))]


def test_candidates_are_the_full_product_and_triangle_blocks_below_n():
    assert S.candidates(1024) == [0, 128, 256, 512]
    assert S.candidates(256) == [0, 64, 128]
    assert S.candidates(256, "triangle") == [64, 128] and S.candidates(256, "full") == [0]
    assert S.candidates(20) == [0]  # too small for a block row


@pytest.mark.parametrize("path", ["cpu", "device"])
def test_full_and_triangle_give_the_same_cka_and_the_cached_choice_equals_its_pinned_run(monkeypatch, gen, path):
    if path == "device":
        monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    xs = _layers(gen)
    ref = mpruner.cka_matrix([x.double() for x in xs])
    results = {}
    for strategy in S.STRATEGIES:
        monkeypatch.setenv(S.ENV, strategy)
        results[strategy] = mpruner.cka_matrix(xs)
        torch.testing.assert_close(results[strategy], ref, atol=1e-6, rtol=0)
    # the same up to the GEMMs' summation order: far below float32's error against float64
    torch.testing.assert_close(results["full"], results["triangle"], atol=1e-8, rtol=0)
    monkeypatch.delenv(S.ENV)
    measured = mpruner.cka_matrix(xs)
    (key, block), = [(k, b) for k, b in S.cached().items() if k[6] == "" and k[3] == "torch.float32"]
    assert block in S.candidates(200)
    if block == 0:
        assert torch.equal(measured, results["full"])
    else:  # the pinned triangle run measured its block too: pin this one and compare
        S.clear()
        monkeypatch.setattr(S, "candidates", lambda n, strategy="": [block])
        assert torch.equal(measured, mpruner.cka_matrix(xs))


def test_a_shape_is_measured_once_per_process(monkeypatch, gen):
    calls = []
    real = S._measure

    def counting(*args):
        calls.append(args[:2])
        return real(*args)

    monkeypatch.setattr(S, "_measure", counting)
    acc = mpruner.CKAAccumulator()
    for _ in range(3):
        acc.update(_layers(gen))
    mpruner.cka_matrix(_layers(gen))
    assert len(calls) == 1 and calls[0][0] == 200
    acc.update([x[:100] for x in _layers(gen)])  # another shape: measured again
    assert len(calls) == 2


def test_an_unknown_pinned_strategy_is_an_error(monkeypatch, gen):
    monkeypatch.setenv(S.ENV, "diagonal")
    with pytest.raises(ValueError, match="MPRUNER_GRAM must be 'full' or 'triangle'"):
        mpruner.cka_matrix(_layers(gen))


def test_traced_calls_take_the_default_without_measuring(monkeypatch, gen):
    feats = _layers(gen, n=64)
    ref = mpruner.cka_matrix([f.double() for f in feats])
    monkeypatch.setattr(S, "_measure", lambda *a: pytest.fail("measured under torch.compile"))
    fn = torch.compile(lambda fs: mpruner.cka_matrix(fs), fullgraph=True)
    torch.testing.assert_close(fn(feats), ref, atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and mpruner.cuda_built()), reason="needs a GPU build")
def test_a_cuda_graph_capture_takes_the_default_without_measuring(monkeypatch, gen):
    # cuda_graph=True captures update(): measuring there would synchronise and break the capture.
    xs = [x.cuda() for x in _layers(gen)]
    monkeypatch.setattr(S, "_measure", lambda *a: pytest.fail("measured while a CUDA graph was captured"))
    torch.cuda.synchronize()
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        block = S.block_for(xs, "highest")
    assert block == -1 and not S.cached()

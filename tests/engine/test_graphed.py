"""mpruner/engine/graphed.py: CKAAccumulator(cuda_graph=True). The capture and replay logic runs
here with a stand-in for torch.cuda.CUDAGraph that records the captured call and replays it on
the static inputs (CPU tensors on the device path), so what is checked is what the graph
would replay: the static inputs and batch index refreshed every batch, one capture per input
signature, the in-place device state, the fallback when a capture fails. On a GPU the real
graph runs too."""
import pytest
import torch

import mpruner
from mpruner.engine import precision as P
from mpruner.engine.graphed import CapturedUpdates
from tests.helpers.host_reads import HostReads


class RecordedGraph:
    """Captures by remembering the function; replays it (as a graph replays its kernels)."""

    captures = 0

    def capture(self, fn):
        RecordedGraph.captures += 1
        self.fn = fn

    def replay(self):
        self.fn()


class FailingGraph:
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def _batches(gen, count, n=20, L=4, d=9):
    z = torch.randn(count * n, 3, generator=gen)
    feats = [z @ torch.randn(3, d, generator=gen) + 0.2 * torch.randn(count * n, d, generator=gen) for _ in range(L)]
    return [[f[i * n:(i + 1) * n] for f in feats] for i in range(count)]


def _graphed(monkeypatch, make_graph, **kwargs):
    monkeypatch.setenv("MPRUNER_ENGINE_PATH", "device")
    acc = mpruner.CKAAccumulator(cuda_graph=True, **kwargs)
    acc._est.graphs = CapturedUpdates(acc._est, make_graph=make_graph, devices=("cpu",))
    return acc


@pytest.mark.parametrize("policy", ["raise", "skip"])
@pytest.mark.parametrize("fused", ["0", "1"])
def test_replayed_updates_equal_eager_ones(monkeypatch, gen, policy, fused):
    monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", fused)
    batches = _batches(gen, 6)
    batches[4] = [x.clone() for x in batches[4]]
    batches[4][1][2, 2] = float("nan")
    RecordedGraph.captures = 0
    acc = _graphed(monkeypatch, RecordedGraph, nan_policy=policy)
    eager = mpruner.CKAAccumulator(nan_policy=policy)
    with HostReads() as mode:
        for b in batches:
            acc.update(b)
            eager.update(b)
    assert mode.syncs == 0, mode.reads
    assert RecordedGraph.captures == 1  # one signature: captured at its second batch
    torch.testing.assert_close(acc._est.flags, eager._est.flags, rtol=0, atol=0)
    torch.testing.assert_close(acc._est.sums, eager._est.sums, rtol=0, atol=0, equal_nan=True)
    if policy == "skip":
        assert (acc.num_batches, acc.num_skipped) == (5, 1)
        torch.testing.assert_close(acc.compute(), eager.compute(), rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match=r"\(batch 4\)"):
            acc.compute()


@pytest.mark.parametrize("precision", ["high", "medium"])
@pytest.mark.parametrize("fused", ["0", "1"])
def test_replayed_updates_run_at_the_precision_mode(monkeypatch, gen, precision, fused):
    """The captured update forms the shifted Grams at the accumulator's precision: the same
    sums as the eager updates at that mode, within the mode's error of float64 and not the
    IEEE float32 result (the bfloat16 arithmetic forced on, as on a CPU with a matrix engine)."""
    monkeypatch.setenv(P.FORCE_ENV, "1")
    monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", fused)
    batches = [[x + 100.0 for x in b] for b in _batches(gen, 5)]  # an offset the shift must remove
    RecordedGraph.captures = 0
    acc = _graphed(monkeypatch, RecordedGraph, precision=precision)
    eager, highest, exact = (mpruner.CKAAccumulator(precision=precision), mpruner.CKAAccumulator(),
                             mpruner.CKAAccumulator())
    for b in batches:
        acc.update(b)
        eager.update(b)
        highest.update(b)
        exact.update([x.double() for x in b])
    assert RecordedGraph.captures == 1 and acc._est.precision == precision
    torch.testing.assert_close(acc._est.sums, eager._est.sums, rtol=0, atol=0)
    got, ref = acc.compute(), exact.compute()
    err, err_highest = float((got - ref).abs().max()), float((highest.compute() - ref).abs().max())
    assert err <= {"high": 1e-5, "medium": 1e-3}[precision], err
    assert not torch.equal(got, highest.compute())
    if precision == "medium":  # bfloat16 inputs: 8 bits, far above float32's error
        assert err > err_highest, (err, err_highest)


def test_each_input_signature_gets_its_own_graph(monkeypatch, gen):
    RecordedGraph.captures = 0
    acc = _graphed(monkeypatch, RecordedGraph)
    eager = mpruner.CKAAccumulator()
    for b in _batches(gen, 3, n=20) + _batches(gen, 3, n=16) + _batches(gen, 2, n=20):
        acc.update(b)
        eager.update(b)
    assert RecordedGraph.captures == 2
    torch.testing.assert_close(acc.compute(), eager.compute(), rtol=0, atol=0)


def test_a_failed_capture_warns_and_stays_eager(monkeypatch, gen):
    acc = _graphed(monkeypatch, FailingGraph)
    eager = mpruner.CKAAccumulator()
    batches = _batches(gen, 4)
    acc.update(batches[0])
    with pytest.warns(RuntimeWarning, match="could not be captured in a CUDA graph"):
        acc.update(batches[1])
    for b in batches[2:]:
        acc.update(b)
    for b in batches:
        eager.update(b)
    assert acc._est.graphs.failed
    torch.testing.assert_close(acc.compute(), eager.compute(), rtol=0, atol=0)


def test_cuda_graph_needs_the_minibatch_estimator():
    with pytest.raises(ValueError, match="cuda_graph=True replays the minibatch"):
        mpruner.CKAAccumulator(estimator="exact", cuda_graph=True)


def test_load_state_dict_forgets_the_graphs(monkeypatch, gen):
    acc = _graphed(monkeypatch, RecordedGraph)
    for b in _batches(gen, 3):
        acc.update(b)
    assert acc._est.graphs.graphs
    state = acc.state_dict()
    acc.load_state_dict(state)
    assert not acc._est.graphs.graphs


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and mpruner.cuda_built()), reason="needs a GPU build")
@pytest.mark.parametrize("fused", ["0", "1"])
def test_cuda_graph_on_the_gpu(monkeypatch, gen, fused):
    monkeypatch.setenv("MPRUNER_FUSED_EPILOGUE", fused)
    batches = [[x.cuda() for x in b] for b in _batches(gen, 5, n=64, L=6, d=32)]
    graphed = mpruner.CKAAccumulator(cuda_graph=True)
    eager = mpruner.CKAAccumulator()
    for b in batches:
        graphed.update(b)
        eager.update(b)
    assert graphed._est.graphs.graphs and not graphed._est.graphs.failed
    torch.testing.assert_close(graphed.compute(), eager.compute(), rtol=0, atol=1e-12)

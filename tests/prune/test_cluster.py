"""The MPruner loop: clustering, granularity, accept/rollback, checkpoints and resume."""
import json
import subprocess
import sys

import pytest
import torch

import mpruner
from mpruner.prune import adjacent_similarities, auto_threshold

from tests.helpers import prune_job

JOB = prune_job.__file__


def _cka(adjacent):
    """A CKA matrix whose entries decay with distance, from given neighbour similarities."""
    L = len(adjacent) + 1
    m = torch.eye(L, dtype=torch.float64)
    for i in range(L):
        for j in range(i + 1, L):
            v = 1.0
            for k in range(i, j):
                v *= adjacent[k]
            m[i, j] = m[j, i] = v
    return m


def test_cluster_anchor_vs_adjacent():
    m = _cka([0.99, 0.99, 0.5, 0.995, 0.9])
    # anchor: CKA(0,2) = 0.9801 >= 0.98 joins, CKA(3,4)=0.995 joins, CKA(3,5)=0.8955 does not
    assert mpruner.cluster_layers(m, 0.98) == [[0, 1, 2], [3, 4], [5]]
    assert mpruner.cluster_layers(m, 0.985) == [[0, 1], [2], [3, 4], [5]]
    assert mpruner.cluster_layers(m, 0.985, method="adjacent") == [[0, 1, 2], [3, 4], [5]]
    nan = m.clone()
    nan[0, 1] = nan[1, 0] = float("nan")
    assert mpruner.cluster_layers(nan, 0.98)[0] == [0]


def test_redundant_members_granularity():
    clusters = [[0, 1, 2, 3, 4], [5], [6, 7]]
    assert mpruner.redundant_members(clusters, 1) == [1, 2, 3, 4, 7]
    assert mpruner.redundant_members(clusters, 2) == [1, 3, 7]
    assert mpruner.redundant_members(clusters, 3) == [1, 4, 7]
    with pytest.raises(ValueError, match="granularity"):
        mpruner.redundant_members(clusters, 0)


def test_cluster_errors_and_auto_threshold():
    with pytest.raises(ValueError, match="square"):
        mpruner.cluster_layers(torch.ones(2, 3))
    with pytest.raises(ValueError, match="threshold"):
        mpruner.cluster_layers(torch.eye(3), 1.5)
    with pytest.raises(ValueError, match="method"):
        mpruner.cluster_layers(torch.eye(3), 0.9, method="kmeans")
    m = _cka([0.93, 0.967, 0.5])
    assert adjacent_similarities(m) == pytest.approx([0.93, 0.967, 0.5])
    assert auto_threshold(m) == pytest.approx(0.965)
    assert auto_threshold(_cka([0.5, 0.6])) == 0.9


def test_loop_removes_redundant_blocks_and_keeps_caller_model():
    model, train, evald = prune_job.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = mpruner.MPruner(model, [x for x, _ in train], lambda m: prune_job.accuracy(m, evald),
                             finetune=mpruner.Finetuner(train, epochs=1, lr=1e-3, progress=False),
                             layers="blocks", threshold=0.95, tolerance=0.05, view="flatten", progress=False,
                             example_inputs=train[0][0])
    result = pruner.run()
    assert result.layers_before == 8 and result.layers_after < 8
    assert result.params_after < result.params_before
    assert result.metric_after >= result.metric_before - 0.05
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    assert len(model.blocks) == 8
    accepted = [h for h in result.history if h.accepted]  # which attempt is accepted depends on the seed
    assert accepted and all(h.removed and len(h.cka) == h.layers_before for h in accepted)
    assert len(result.history[0].cka) == 8
    assert result.stats_before["params"] > result.stats_after["params"]
    assert "layers   8 ->" in result.summary()
    assert result.model(train[0][0]).shape == (32, 3)


def test_rollback_then_finer_granularity():
    model, train, evald = prune_job.build()
    calls = []

    def evaluate(m):  # good only while at least 5 of the 8 blocks remain
        n = len(m.blocks)
        calls.append(n)
        return 1.0 if n >= 5 else 0.0

    pruner = mpruner.MPruner(model, [x for x, _ in train], evaluate, layers="blocks", threshold=0.95,
                             tolerance=0.0, max_granularity=3, view="flatten", progress=False)
    result = pruner.run()
    ks = [(h.granularity, h.accepted, len(h.removed)) for h in result.history]
    assert ks[0][1] is False and ks[0][0] == 1          # k=1 removes too much: rolled back
    assert any(acc for _, acc, _ in ks)                 # a finer step is accepted
    assert all(n <= 3 for _, acc, n in ks if acc)
    assert len(result.model.blocks) >= 5
    assert result.stop_reason
    rejected = [h for h in result.history if not h.accepted]
    assert all(h.layers_after < h.layers_before for h in rejected)
    assert len(result.model.blocks) == 8 - sum(len(h.removed) for h in result.history if h.accepted)


def test_nothing_to_remove_reports_adjacent_similarities():
    model, train, evald = prune_job.build()
    result = mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", threshold=0.99999,
                             view="flatten", progress=False).run()
    assert result.layers_after == 8 and not result.history
    assert "nothing to remove" in result.stop_reason and "adjacent CKA" in result.stop_reason


def test_bad_arguments():
    model, train, _ = prune_job.build()
    with pytest.raises(ValueError, match="threshold"):
        mpruner.MPruner(model, train, lambda m: 0.0, layers="blocks", threshold=2)
    with pytest.raises(ValueError, match="tolerance_mode"):
        mpruner.MPruner(model, train, lambda m: 0.0, layers="blocks", tolerance_mode="percent")
    with pytest.raises(TypeError, match="evaluate"):
        mpruner.MPruner(model, train, None, layers="blocks")
    with pytest.raises(ValueError, match="not a block list"):
        mpruner.MPruner(model, train, lambda m: 0.0, layers="nope")
    with pytest.raises(ValueError, match="checkpoint_dir"):
        mpruner.MPruner(model, train, lambda m: 0.0, layers="blocks").run(resume=True)


def _job(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, JOB, str(tmp_path / f"ckpt-{name}"),
                           str(out), *extra], capture_output=True, text=True)
    return proc, out


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    proc, ref_out = _job(tmp_path, "ref")
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(ref_out.read_text())
    assert len(ref["summary"]["history"]) >= 2

    # Killed during the 3rd evaluation: the original's, attempt 0's, then mid attempt 1.
    proc, _ = _job(tmp_path, "run", "--kill-at", "3")
    assert proc.returncode == -9
    state = json.loads((tmp_path / "ckpt-run" / "state.json").read_text())
    assert state["iteration"] == 1 and not state["done"]
    proc, out = subprocess.run([sys.executable, JOB, str(tmp_path / "ckpt-run"),
                                str(tmp_path / "resumed.json"), "--resume"], capture_output=True, text=True), None
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "resumed.json").read_text())
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    hist = lambda s: [{k: v for k, v in h.items() if k != "seconds"} for h in s["history"]]  # noqa: E731
    assert hist(got["summary"]) == hist(ref["summary"])
    assert {k: v for k, v in strip(got["summary"]).items() if k != "history"} == \
        {k: v for k, v in strip(ref["summary"]).items() if k != "history"}
    assert got["weights"] == ref["weights"]


def test_auto_threshold_tries_each_layer_once_after_rollbacks():
    model, train, _ = prune_job.build()
    pruner = mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0 if len(m.blocks) == 8 else 0.0,
                             layers="blocks", threshold="auto", tolerance=0.0, view="flatten", progress=False,
                             max_iterations=20)
    result = pruner.run()
    sets = [tuple(h.removed) for h in result.history]
    assert sets
    assert len(set(sets)) == len(sets)                      # nothing rejected is tried again
    assert not any(h.accepted for h in result.history)
    singles = [s[0] for s in sets if len(s) == 1]
    assert len(singles) >= 2                                # single layers are excluded one after another
    assert "excluded after rollback" in result.stop_reason or "max_granularity" in result.stop_reason

"""The MPruner loop (mpruner/prune/loop.py): its arguments, the accept rule, planning
(clusters, granularity, thresholds), rollback, the log, stage times, block lists."""
import time

import pytest
import torch
import torch.nn as nn

import mpruner
from mpruner.prune import loop
from mpruner.prune.cluster import cluster_layers
from mpruner.prune.loop import MPruner
from tests.helpers import prune_job
from tests.helpers.prune_job import blocks_metric as _blocks_metric
from tests.helpers.prune_job import pruner as _pruner
from tests.helpers.tiny_lms import tiny_lm

pytestmark = pytest.mark.filterwarnings("ignore:no mpruner adapter recognises")


# Every refusal of MPruner's arguments word for word (a message that lost the argument's name,
# the value or the fix would still pass a match= test).
@pytest.mark.parametrize("change, error, message", [
    ({"model": 5}, TypeError, "model must be a torch.nn.Module, got int"),
    ({"evaluate": None}, TypeError, "evaluate must be a callable evaluate(model) -> float (higher is better)"),
    ({"finetune": 5}, TypeError, "finetune must be a callable finetune(model) -> None, a mpruner.Finetuner, or None"),
    ({"threshold": 0}, ValueError, "threshold must be in (0, 1] or 'auto', got 0"),
    ({"threshold": 1.5}, ValueError, "threshold must be in (0, 1] or 'auto', got 1.5"),
    ({"threshold": "x"}, ValueError, "threshold must be in (0, 1] or 'auto', got 'x'"),
    ({"tolerance": -1}, ValueError, "tolerance must be a number >= 0, got -1"),
    ({"tolerance": "a"}, ValueError, "tolerance must be a number >= 0, got 'a'"),
    ({"higher_is_better": 1}, TypeError, "higher_is_better must be True or False, got 1"),
    ({"tolerance_mode": "x"}, ValueError, "tolerance_mode must be one of ('auto', 'absolute', 'relative'), got 'x'"),
    ({"cluster_method": "x"}, ValueError, "cluster_method must be one of ('anchor', 'adjacent'), got 'x'"),
    ({"max_granularity": 0}, ValueError, "max_granularity must be an integer >= 1, got 0"),
    ({"max_granularity": 1.0}, ValueError, "max_granularity must be an integer >= 1, got 1.0"),
    ({"max_iterations": 0}, ValueError, "max_iterations must be an integer >= 1, got 0"),
    ({"select": "x"}, ValueError, "select must be one of ('cluster', 'lowest-influence', 'contiguous', 'cka', "
                                  "'influence', 'angular', 'update', 'loo', 'greedy', 'auto'), got 'x'"),
    ({"replace": "cubic"}, ValueError, "replace must be one of (None, 'linear'), got 'cubic'"),
    ({"n": 1}, ValueError, "n / target_layers apply to select='lowest-influence' or 'contiguous'; "
                           "select='cluster' removes what the CKA clusters give"),
    ({"target_layers": 2}, ValueError, "n / target_layers apply to select='lowest-influence' or 'contiguous'; "
                                       "select='cluster' removes what the CKA clusters give"),
    ({"select": "contiguous"}, ValueError, "select='contiguous' needs n (blocks to remove) or target_layers (depth "
                                           "to reach), exactly one of them"),
    ({"select": "contiguous", "n": 1, "target_layers": 1}, ValueError,
     "select='contiguous' needs n (blocks to remove) or target_layers (depth to reach), exactly one of them"),
    ({"select": "contiguous", "n": 0}, ValueError, "n must be an integer >= 1, got 0"),
    ({"select": "contiguous", "n": True}, ValueError, "n must be an integer >= 1, got True"),
    ({"select": "contiguous", "target_layers": 1.0}, ValueError, "target_layers must be an integer >= 1, got 1.0"),
    ({"select": "contiguous", "target_layers": 0}, ValueError, "target_layers must be an integer >= 1, got 0"),
    ({"select": "contiguous", "n": 1, "view": "mean"}, ValueError,
     "select='contiguous' compares block inputs and outputs token by token: view must be 'tokens' or "
     "'last_token', got 'mean'"),
    ({"select": "contiguous", "target_layers": 8}, ValueError,
     "target_layers must be in [1, 7] (the model has 8 blocks), got 8"),
    ({"select": "contiguous", "n": 8}, ValueError, "n=8 would remove every block (the model has 8); pass a smaller n"),
    ({"layers": "nope"}, ValueError, "layers='nope' is not a block list of this model (available: ['blocks']); "
                                     "path 'nope': Net has no submodule 'nope'"),
])
def test_loop_arguments_word_for_word(job, change, error, message):
    with pytest.raises(error) as info:
        _pruner(job, **change)
    assert str(info.value) == message


# The boundaries and defaults the checks above must let through.
def test_loop_argument_boundaries(job):
    p = _pruner(job, threshold=1, tolerance=0, max_granularity=1, max_iterations=1)
    assert (p.threshold, p.tolerance, p.max_granularity, p.max_iterations, p.view) == (1, 0.0, 1, 1, "mean")
    assert _pruner(job, threshold="auto").threshold == "auto"
    p = _pruner(job, select="contiguous", target_layers=7)
    assert (p.n, p.target_layers, p.view, p.layers_before) == (1, 7, "tokens", 8)
    p = _pruner(job, select="lowest-influence", target_layers=1, view="last_token")
    assert (p.n, p.view) == (7, "last_token")
    assert _pruner(job, select="contiguous", n=7).n == 7
    assert _pruner(job, view="flatten").view == "flatten"


# The accept rule's four bounds (absolute / relative, higher or lower is better), met exactly
# at the bound, and NaN or None never accepted.
@pytest.mark.parametrize("mode, higher, bound", [
    ("absolute", True, 0.75), ("relative", True, 0.64), ("absolute", False, 0.85), ("relative", False, 0.96),
])
def test_accepts_at_its_bound(job, mode, higher, bound):
    p = _pruner(job, tolerance=0.05 if mode == "absolute" else 0.2, tolerance_mode=mode, higher_is_better=higher)
    p.metric_before = 0.8
    assert p._bound() == pytest.approx(bound, abs=1e-12)
    step = 1e-9 if higher else -1e-9
    assert p.accepts(bound + step) and not p.accepts(bound - step)
    assert not p.accepts(float("nan")) and not p.accepts(None)


# A run's log, line for line: the original metric, each attempt (its k, the removed blocks, the
# metric, the verdict, the bound), the stop; a rollback of several blocks takes a finer step, and
# the step stays after an acceptance.
def test_run_log_line_for_line(job, capsys):
    r = _pruner(job, evaluate=_blocks_metric, tolerance=0.035, max_iterations=6, verbose=True).run()
    assert capsys.readouterr().out.splitlines() == [
        "mpruner: original metric 1.0000",
        "mpruner: attempt 0: k=1 remove [2, 4, 5, 7] -> metric 0.9600 (rolled back; bound 0.9650)",
        "mpruner: attempt 1: k=2 remove [2, 4, 7] -> metric 0.9700 (accepted; bound 0.9650)",
        "mpruner: attempt 2: k=2 remove [2, 4] -> metric 0.9500 (rolled back; bound 0.9650)",
        "mpruner: stopped: rejected up to max_granularity=3",
    ]
    assert [(h.iteration, h.granularity, h.removed, h.accepted, h.layers_before, h.layers_after)
            for h in r.history] == [(0, 1, [2, 4, 5, 7], False, 8, 4), (1, 2, [2, 4, 7], True, 8, 5),
                                    (2, 2, [2, 4], False, 5, 3)]
    assert r.history[1].removed_names == ["blocks.2", "blocks.4", "blocks.7"]
    # each record keeps the layer names, clusters and metric it was decided on
    assert [h.layer_names for h in r.history] == [[f"blocks.{i}" for i in range(n)] for n in (8, 8, 5)]
    assert [h.metric for h in r.history] == [pytest.approx(v) for v in (0.96, 0.97, 0.95)]
    for h in r.history:
        assert h.clusters == cluster_layers(torch.tensor(h.cka), h.threshold) and len(h.clusters) >= 2
    assert (r.layers_before, r.layers_after, r.metric_before, r.metric_after) == (8, 5, 1.0, pytest.approx(0.97))
    assert r.params_after < r.params_before and r.stop_reason == "rejected up to max_granularity=3"
    assert set(r.seconds) == {"analyze", "finetune", "evaluate"} and r.seconds["analyze"] > 0
    assert all(v >= 0 for v in r.seconds.values())
    assert all(set(h.seconds) == {"evaluate"} and h.seconds["evaluate"] >= 0 for h in r.history)  # no fine-tuning


# A single block rolled back is excluded for this model (no finer step exists), and the stop
# says so, with the adjacent similarities; verbose=False prints nothing.
def test_single_rollback_excludes_the_block(job, capsys):
    r = _pruner(job, evaluate=_blocks_metric, tolerance=0.045, max_iterations=6, verbose=False).run()
    assert capsys.readouterr().out == ""
    assert [(h.removed, h.accepted, h.granularity) for h in r.history] == [([2, 4, 5, 7], True, 1), ([2], False, 1)]
    assert r.stop_reason.startswith("nothing to remove: at threshold 0.9800 (adjacent CKA: ")
    assert r.stop_reason.endswith("; excluded after rollback: [2])")


# With threshold="auto", each single layer rolled back is left out of the next threshold, which
# therefore falls to the next most similar pair (0.995 while similar pairs remain, then 0.99,
# 0.98, 0.96), and no set is tried twice.
def test_auto_threshold_leaves_out_excluded_layers(job):
    r = _pruner(job, evaluate=lambda m: 1.0 if len(m.blocks) == 8 else 0.0, threshold="auto", tolerance=0.0,
                view="flatten", max_iterations=20, verbose=False).run()
    assert [h.removed for h in r.history] == [[4, 6], [6], [4], [5], [7], [3], [2], [1]]
    assert [round(h.threshold, 4) for h in r.history] == [0.995] * 5 + [0.99, 0.98, 0.96]


# The loop clusters with the method it was given.
def test_cluster_method_reaches_the_clusters(job):
    h = _pruner(job, cluster_method="adjacent", max_iterations=1, verbose=False).run().history[0]
    cka = torch.tensor(h.cka)
    assert h.clusters == cluster_layers(cka, h.threshold, "adjacent") != cluster_layers(cka, h.threshold, "anchor")


# max_granularity is the last step tried, not the first refused: with 3, an attempt at k=3 is
# made; with 2, it is not.
@pytest.mark.parametrize("max_granularity", [2, 3])
def test_max_granularity_is_the_last_step_tried(job, max_granularity):
    r = _pruner(job, evaluate=_blocks_metric, threshold=0.95, tolerance=0.025, max_granularity=max_granularity,
                verbose=False).run()
    steps = [(1, [1, 3, 4, 5, 6]), (2, [1, 3, 5]), (3, [1, 3, 6])][:max_granularity]
    assert [(h.granularity, h.removed) for h in r.history] == steps and not any(h.accepted for h in r.history)
    assert r.stop_reason == f"rejected up to max_granularity={max_granularity}"


# The analysis gets the loop's block list, view and progress flag, and for a strategy its
# metric with block inputs.
@pytest.mark.parametrize("select", ["cluster", "contiguous"])
def test_analysis_gets_the_loops_options(job, monkeypatch, select):
    import mpruner.analysis as analysis

    seen = []
    monkeypatch.setattr(analysis, "analyze", lambda model, data, **kw: seen.append(kw) or "analysis")
    extra = {"select": select, "n": 1, "view": "last_token"} if select == "contiguous" else {"view": "flatten"}
    p = _pruner(job, max_iterations=1, verbose=False, **extra)
    assert p._analyze() == "analysis"
    want = {"layers": "blocks", "view": extra["view"], "progress": False}
    if select == "contiguous":
        want.update(metric="angular", block_inputs=True)
    assert seen == [want]


# With progress bars the log lines go through tqdm.write, to stdout, in the same words.
def test_log_lines_with_progress_bars(job, capsys):
    _pruner(job, evaluate=_blocks_metric, tolerance=0.035, max_iterations=1, verbose=True, progress=True).run()
    assert capsys.readouterr().out.splitlines() == [
        "mpruner: original metric 1.0000",
        "mpruner: attempt 0: k=1 remove [2, 4, 5, 7] -> metric 0.9600 (rolled back; bound 0.9650)",
        "mpruner: stopped: reached max_iterations=1",
    ]


# The stage times add up every call (at least the time each call slept, at most the run's wall
# time: bounds that hold however loaded the machine), and each attempt records its own
# fine-tuning time; attempt i fine-tunes from seed + i; with nothing accepted the final metric
# is the original one.
def test_stage_times_seeds_and_final_metric(job):
    seeds = []

    def finetune(model):
        seeds.append(torch.initial_seed())
        time.sleep(0.02)

    def evaluate(model):
        time.sleep(0.01)
        return _blocks_metric(model)

    start = time.perf_counter()
    r = _pruner(job, evaluate=evaluate, finetune=finetune, threshold=0.95, tolerance=0.025, seed=5,
                verbose=False).run()
    wall = time.perf_counter() - start
    assert len(r.history) == 3 and seeds == [5, 6, 7] and not any(h.accepted for h in r.history)
    assert 4 * 0.01 <= r.seconds["evaluate"] <= wall and 3 * 0.02 <= r.seconds["finetune"] <= wall
    assert all(set(h.seconds) == {"finetune", "evaluate"} and 0.02 <= h.seconds["finetune"] <= wall
               and 0.01 <= h.seconds["evaluate"] <= wall for h in r.history)
    assert r.metric_after == r.metric_before == 1.0


# A model with two block containers is pruned in the one named (removable_layers is asked for
# that block list's path).
def test_model_with_two_block_containers(job):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = prune_job.Net()
            self.other = nn.Sequential(nn.Identity(), nn.Identity())

        def forward(self, x):
            return self.other(self.inner(x))

    model = Two()
    r = MPruner(model, job[1], lambda m: 1.0, layers="inner.blocks", progress=False, verbose=False,
                max_iterations=1).run()
    assert r.history[0].accepted and r.layers_after < 8 and len(r.model.other) == 2


# evaluate may switch the model to eval mode; the loop's copy is deep, so the caller's modules
# keep their own mode. The stage times start at zero; resume without a directory is refused
# word for word; no stats without example inputs; the result keeps the tolerance.
def test_loop_copy_times_and_result_fields(job):
    def evaluate(model):
        model.eval()
        return _blocks_metric(model)

    model = job[0].train()
    p = _pruner(job, evaluate=evaluate, tolerance=0.035, max_iterations=1, verbose=False)
    assert p.seconds == {"analyze": 0.0, "finetune": 0.0, "evaluate": 0.0}
    r = p.run()
    assert all(m.training for m in model.modules())
    assert r.seconds["finetune"] == 0.0 and r.stats_before is None and r.stats_after is None
    assert (r.tolerance, r.tolerance_mode) == (0.035, "absolute")
    with pytest.raises(ValueError) as info:
        _pruner(job).run(resume=True)
    assert str(info.value) == "resume=True needs checkpoint_dir"


# An adapter that finds no block list is refused with the fix.
def test_no_block_list_found(job, monkeypatch):
    monkeypatch.setattr(loop, "find_blocks", lambda model, path=None: [])
    with pytest.raises(ValueError) as info:
        _pruner(job, layers="auto")
    assert str(info.value) == "found no block list in this model; pass layers='<attribute path>'"


# A guessed container (layers="auto" on a model no adapter knows) is kept by its path, so the loop
# still finds it once pruning leaves it a single block (the guess needs two or more).
def test_guessed_container_pruned_to_one_block(job):
    r = _pruner(job, layers="auto", evaluate=lambda m: 1.0, threshold=0.5, max_iterations=4, verbose=False).run()
    assert r.layers_after == 1 and len(r.model.blocks) == 1
    assert r.stop_reason.startswith("nothing to remove")


# Planning (MPruner._plan) on hand-made CKA matrices: each branch, exactly.
def _matrix(size, pairs, rest=0.3):
    c = torch.full((size, size), rest, dtype=torch.float64)
    c.fill_diagonal_(1.0)
    for (i, j), v in pairs.items():
        c[i, j] = c[j, i] = v
    return c


def _plan(job, cka, threshold="auto", excluded=(), rejected=(), granularity=1, max_granularity=3):
    p = _pruner(job, threshold=threshold, max_granularity=max_granularity, verbose=False)
    p._excluded, p._rejected, p.granularity = list(excluded), [list(r) for r in rejected], granularity
    return p._plan(cka, set(range(cka.shape[0]))), p


# With threshold="auto", when the clusters offer only excluded layers (block 1 joined block 0's
# cluster, so the similar pair (1, 2) is missed), the most similar remaining layer alone is tried:
# block 2; from block 1 on (block 0 has no predecessor), by its similarity to its predecessor, down
# to the floor itself (0.9 is enough).
def test_plan_auto_falls_back_to_the_most_similar_layer(job):
    a = _matrix(4, {(0, 1): 0.992, (0, 2): 0.5, (0, 3): 0.995, (1, 2): 0.99, (1, 3): 0.5, (2, 3): 0.93})
    assert _plan(job, a, excluded=[1])[0] == (0.99, [[0, 1], [2], [3]], [2])
    b = _matrix(4, {(0, 1): 0.95, (0, 2): 0.5, (1, 2): 0.9, (2, 3): 0.85})
    assert _plan(job, b, excluded=[1])[0] == (0.9, [[0, 1], [2], [3]], [2])


# With a fixed threshold a rejected set means the next finer step (k = 2: blocks 1 and 3 of the
# cluster 0..4, not k = 3's 1 and 4); a rejected single block is excluded, and the stop then names
# it.
def test_plan_fixed_threshold_after_rejections(job):
    c = _matrix(5, {(i, j): 0.99 for i in range(5) for j in range(i + 1, 5)})
    plan, p = _plan(job, c, threshold=0.98, rejected=[[1, 2, 3, 4]])
    assert plan == (0.98, [[0, 1, 2, 3, 4]], [1, 3]) and p.granularity == 2
    d = _matrix(4, {(1, 2): 0.99})
    plan, p = _plan(job, d, threshold=0.98, rejected=[[2]])
    assert plan == "nothing to remove: at threshold 0.9800 (adjacent CKA: 0.3000, 0.9900, 0.3000; excluded after " \
                   "rollback: [2])" and p._excluded == [2]


# The stop messages word for word, with no note when nothing was excluded, for a fixed threshold and
# for "auto".
def test_plan_stop_messages(job):
    a = _matrix(4, {(0, 1): 0.992, (1, 2): 0.99, (2, 3): 0.93})
    assert _plan(job, a, threshold=1.0)[0] == "nothing to remove: at threshold 1.0000 (adjacent CKA: 0.9920, " \
                                             "0.9900, 0.9300)"
    assert _plan(job, _matrix(4, {}))[0] == "nothing to remove: no removable layer left with adjacent CKA >= 0.9 " \
                                            "(adjacent CKA: 0.3000, 0.3000, 0.3000)"


# With "auto" a new set at the last allowed step is still tried whole.
def test_plan_auto_at_max_granularity(job):
    c = _matrix(5, {(i, j): 0.99 for i in range(5) for j in range(i + 1, 5)})
    assert _plan(job, c, granularity=3)[0] == (0.99, [[0, 1, 2, 3, 4]], [1, 4])


# With "auto", once a set is rejected the block of it most similar to its predecessor is tried alone
# (block 1 in the first matrix, block 3 in the second); if that single block was rejected too, it is
# excluded and planning goes on.
def test_plan_auto_tries_the_best_single_block(job):
    first = _matrix(4, {(0, 1): 0.999, (0, 2): 0.999, (0, 3): 0.999, (1, 2): 0.995, (1, 3): 0.999, (2, 3): 0.996})
    assert _plan(job, first, rejected=[[1, 3]], granularity=2)[0] == (0.995, [[0, 1, 2, 3]], [1])
    second = _matrix(5, {(0, 1): 0.996, (1, 2): 0.996, (2, 3): 0.999, (3, 4): 0.996, (0, 2): 0.997, (0, 3): 0.997,
                         (0, 4): 0.997, (1, 3): 0.3, (1, 4): 0.9})
    assert _plan(job, second, rejected=[[1, 3]], granularity=2)[0] == (0.995, [[0, 1, 2, 3, 4]], [3])
    plan, p = _plan(job, first, rejected=[[1, 3], [1]], granularity=2)
    assert p._excluded == [1] and plan[2] == [3]


# Progress bars and the log are on by default.
def test_progress_and_log_on_by_default(job):
    p = MPruner(job[0], job[1], lambda m: 1.0, layers="blocks")
    assert p.progress is True and p.verbose is True


# Only a guessed (generic) container is pinned by its path; a recognised architecture keeps its
# adapter, with layers="auto" or named.
def test_recognised_architecture_is_not_pinned_by_path():
    model = tiny_lm("llama")
    for layers in ("auto", mpruner.find_blocks(model)[0].name):
        p = MPruner(model, [], lambda m: 1.0, layers=layers, progress=False)
        assert p._path is None and p.block_list == mpruner.find_blocks(model)[0].name


# For a model no adapter can guess, the error says no block list was found ("none") and why the path
# does not work.
def test_unknown_layers_on_an_ambiguous_model(job):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Identity(), nn.Identity())
            self.b = nn.Sequential(nn.Identity(), nn.Identity())

    with pytest.raises(ValueError) as info:
        MPruner(Two(), job[1], lambda m: 1.0, layers="nope", progress=False)
    assert str(info.value) == "layers='nope' is not a block list of this model (available: none); path 'nope': Two " \
                              "has no submodule 'nope'"


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


def _tolerance_pruner(tolerance, mode):
    model, train, _ = prune_job.build()
    return mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", tolerance=tolerance,
                           tolerance_mode=mode, progress=False)


def test_tolerance_modes_accept_at_their_bound():
    absolute, relative = _tolerance_pruner(0.25, "absolute"), _tolerance_pruner(0.25, "relative")
    absolute.metric_before = relative.metric_before = 0.5  # bounds exact in binary: 0.25 and 0.375
    assert absolute.accepts(0.25) and not absolute.accepts(0.2499)        # 0.5 - 0.25
    assert relative.accepts(0.375) and not relative.accepts(0.3749)       # 0.5 * (1 - 0.25)
    assert absolute.accepts(0.3) and not relative.accepts(0.3)            # the modes differ
    assert not absolute.accepts(float("nan")) and not relative.accepts(None)


def _lm_pruner(**kw):
    model = tiny_lm("llama", layers=4)
    batches = [{"input_ids": torch.randint(3, 97, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    return mpruner.MPruner(model, batches, evaluate=lambda m: 0.0, progress=False, **kw)


@pytest.mark.parametrize("mode, before, ok, bad", [
    ("relative", 10.0, 11.0, 11.01),   # ppl may rise by 10%
    ("absolute", 10.0, 10.1, 10.11),   # ... or by 0.1
])
def test_lower_is_better_tolerance(mode, before, ok, bad):
    tol = 0.1
    p = _lm_pruner(tolerance=tol, tolerance_mode=mode, higher_is_better=False)
    p.metric_before = before
    assert p.accepts(ok) and p.accepts(before * 0.5) and not p.accepts(bad) and not p.accepts(float("nan"))
    assert p._options()["higher_is_better"] is False
    assert "higher_is_better" not in _lm_pruner()._options()  # default runs keep their checkpoint options


def test_higher_is_better_default_unchanged():
    p = _lm_pruner(tolerance=0.1, tolerance_mode="relative")
    p.metric_before = 0.8
    assert p.accepts(0.73) and not p.accepts(0.71)
    with pytest.raises(TypeError, match="higher_is_better"):
        _lm_pruner(higher_is_better="min")

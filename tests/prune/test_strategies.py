"""The selection strategies LLM depth pruning uses (mpruner/prune/strategies.py): lowest
Block Influence, the contiguous run of smallest angular distance, CKA clusters; rollback and
resume with a strategy."""
import pytest
import torch

import mpruner

from tests.helpers.lm_blocks import IDENTITY, planted, sampled
from tests.helpers.tiny_lms import tiny_lm


def _calib(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        ids = torch.randint(3, 97, (3, 10), generator=g)
        mask = torch.ones(3, 10, dtype=torch.long)
        mask[1, 7:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_lowest_influence_removes_the_lowest_blocks():
    from mpruner.prune.strategies import lowest_influence

    model, calib = tiny_lm("llama", layers=6), _calib()
    infl = mpruner.analyze(model, calib, metric="cosine", progress=False).block_influence()
    p = mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="lowest-influence", n=2, progress=False)
    result = p.run()
    expected = sorted(sorted(range(6), key=lambda i: float(infl[i]))[:2])
    assert result.history[0].removed == expected == lowest_influence(infl, 2, set(range(6)))
    assert result.layers_after == 4 and len(result.history) == 1 and "removed n=2" in result.stop_reason
    assert len(result.model.model.layers) == 4 and result.model.config.num_hidden_layers == 4


def test_contiguous_removes_the_run_of_smallest_angular_distance():
    model, calib = tiny_lm("qwen2", layers=6), _calib(1)
    dist = mpruner.analyze(model, calib, metric="angular", progress=False).run_distance(3)
    result = mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="contiguous", target_layers=3,
                             progress=False).run()
    start = int(torch.argmin(dist))
    assert result.history[0].removed == [start, start + 1, start + 2]
    assert result.layers_after == 3


def test_strategy_rollback_takes_a_finer_step_and_resumes(tmp_path):
    model, calib = tiny_lm("mistral", layers=6), _calib(2)
    # Perplexity-like metric: rises with every removed block; the bound lets only one go at a time.
    ev = lambda m: 10.0 + 2.0 * (6 - len(m.model.layers))  # noqa: E731
    kw = dict(evaluate=ev, select="lowest-influence", n=2, higher_is_better=False, tolerance=0.25,
              tolerance_mode="relative", progress=False, checkpoint_dir=tmp_path / "ck", max_iterations=3)
    p = mpruner.MPruner(model, calib, **kw)
    first = p.step()
    assert len(first.removed) == 2 and not first.accepted      # 14 > 12.5: rolled back
    second = p.step()
    assert len(second.removed) == 1 and second.accepted        # k=2: one block, 12 <= 12.5
    resumed = mpruner.MPruner(model, calib, **kw).run(resume=True)
    assert [len(h.removed) for h in resumed.history][:2] == [2, 1]
    assert resumed.layers_after == 5  # the second single block (14) is rejected, then the step limit


def test_strategy_argument_errors():
    model, calib = tiny_lm("llama", layers=3), _calib()
    with pytest.raises(ValueError, match="n .*or target_layers"):
        mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="contiguous", progress=False)
    with pytest.raises(ValueError, match="select"):
        mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="random", n=1, progress=False)
    with pytest.raises(ValueError, match="view"):
        mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="contiguous", n=1, view="mean", progress=False)
    with pytest.raises(ValueError, match="every block"):
        mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="contiguous", n=3, progress=False)
    with pytest.raises(ValueError, match="cluster"):
        mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, n=1, progress=False)


def test_cka_cluster_blocks_picks_within_clusters():
    from mpruner.prune.strategies import cka_cluster_blocks

    cka = torch.tensor([[1.0, .99, .98, .5], [.99, 1.0, .97, .5], [.98, .97, 1.0, .6], [.5, .5, .6, 1.0]],
                       dtype=torch.float64)
    assert cka_cluster_blocks(cka, 1, {0, 1, 2, 3}) == [1]
    assert cka_cluster_blocks(cka, 2, {0, 1, 2, 3}) == [1, 2]


# After one block of n=2 is accepted, the next attempt asks for the one block still to go (n
# minus what was removed so far), not three.
def test_strategy_asks_for_what_remains_of_n(tmp_path):
    g = torch.Generator().manual_seed(2)
    calib = [{"input_ids": torch.randint(3, 97, (3, 10), generator=g), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
             for _ in range(2)]
    ev = lambda m: 10.0 + 2.0 * (6 - len(m.model.layers))  # noqa: E731 - each removed block costs 2
    result = mpruner.MPruner(tiny_lm("mistral", layers=6), calib, evaluate=ev, select="lowest-influence", n=2,
                             higher_is_better=False, tolerance=0.25, tolerance_mode="relative", progress=False,
                             max_iterations=3).run()
    assert [len(h.removed) for h in result.history] == [2, 1, 1]
    assert [h.accepted for h in result.history] == [False, True, False]


# The loop plans with the strategy it was given, not the contiguous rule for every select: two
# identity blocks apart from each other (zero output projections, Block Influence 0) are
# lowest-influence's pick; no contiguous run holds both.
def test_lowest_influence_is_not_a_contiguous_run():
    model = tiny_lm("llama", layers=6)
    with torch.no_grad():
        for i in (1, 4):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(3, 97, (3, 10), generator=g), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
             for _ in range(2)]
    result = mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="lowest-influence", n=2,
                             progress=False).run()
    assert result.history[0].removed == [1, 4] and result.layers_after == 4


# ---------------------------------------------------------------- ranking selections of mpruner.lm, replace='linear'
def test_mpruner_takes_a_ranking_method_and_linear_replacement():
    model = planted("llama", layers=5)
    data = sampled(model, n=5)  # 320 tokens: the fitted 32 x 32 map has 10 per dimension
    from mpruner.evaluation.loss import causal_lm_nll

    def loss(m):
        total, count = causal_lm_nll(m, data)
        return total / count

    result = mpruner.MPruner(model, data, loss, select="loo", n=1, replace="linear", higher_is_better=False,
                             tolerance=0.5, progress=False, verbose=False).run()
    assert result.history[0].removed == [IDENTITY] and result.history[0].accepted
    assert result.history[0].similarity == "angular" and result.history[0].report()["score"] == \
        result.history[0].threshold
    assert result.layers_after == 4 and result.metric_after == pytest.approx(result.metric_before, abs=1e-6)


def test_replace_is_refused_up_front_for_a_model_without_a_foldable_projection():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="replace='linear' folds .* declares none"):
        mpruner.MPruner(net, [torch.randn(8, 4)], lambda m: 1.0, layers="", replace="linear", select="update", n=1)
    with pytest.raises(ValueError, match="replace must be one of"):
        mpruner.MPruner(net, [torch.randn(8, 4)], lambda m: 1.0, layers="", replace="quadratic")

"""mpruner.lm.rank_blocks / choose_blocks: every method finds a planted identity block, the
loss-driven methods equal brute force, normalized CKA sees past a massive dimension, and bad
input is refused before any long work, the caller's model untouched."""
import math

import pytest
import torch

import mpruner
from mpruner.lm import choose_blocks, rank_blocks
from mpruner.lm.select import METHODS

from tests.helpers.lm_blocks import IDENTITY, batches, planted, sampled, state
from tests.helpers.tiny_lms import VOCAB, tiny_lm

pytest.importorskip("transformers")

@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_ranks_a_planted_identity_block_first(family, method):
    model = planted(family)
    before = state(model)
    data = sampled(model)
    scores = rank_blocks(model, data, method, progress=False)
    assert scores.shape == (5,) and scores.dtype == torch.float64
    finite = [i for i in range(5) if math.isfinite(float(scores[i]))]
    assert min(finite, key=lambda i: float(scores[i])) == IDENTITY, scores
    if method in ("cka", "influence", "angular", "update", "loo"):
        assert abs(float(scores[IDENTITY])) < 1e-5  # removing it changes nothing
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # never modified
    assert choose_blocks(model, data, 1, method=method, progress=False) == [IDENTITY]


def _loss_without(model, removed, data):
    """Brute force: a real copy with the blocks removed, and its mean next-token loss."""
    from mpruner.evaluation.loss import causal_lm_nll

    pruned = mpruner.remove_layers(model, {"model.layers": list(removed)}) if removed else model
    total, count = causal_lm_nll(pruned, data)
    return total / count


def test_leave_one_out_equals_removing_each_block():
    model, data = tiny_lm("llama", layers=4, seed=3), batches(seed=1)
    scores = rank_blocks(model, data, "loo", protect=None, progress=False)
    base = _loss_without(model, [], data)
    expected = [_loss_without(model, [i], data) - base for i in range(4)]
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_greedy_equals_a_brute_force_greedy_loop():
    model, data = tiny_lm("llama", layers=4, seed=4), batches(seed=2)
    chosen, left = [], [0, 1, 2, 3]
    for _ in range(3):
        losses = {i: _loss_without(model, sorted(chosen + [i]), data) for i in left}
        best = min(left, key=lambda i: (losses[i], -i))
        chosen.append(best)
        left.remove(best)
    scores = rank_blocks(model, data, "greedy", protect=None, limit=3, progress=False)
    assert [int(i) for i in scores.argsort()[:3]] == chosen
    assert math.isinf(float(scores[left[0]]))
    assert choose_blocks(model, data, 2, method="greedy", protect=None, progress=False) == sorted(chosen[:2])


def test_protect_keeps_the_ends_and_an_explicit_list():
    model = planted("llama", layers=5, identity=0)  # block 0 is the safest, but protected by default
    data = batches()
    assert 0 not in choose_blocks(model, data, 2, method="update", progress=False)
    assert 0 in choose_blocks(model, data, 1, method="update", protect=None, progress=False)
    assert choose_blocks(model, data, 2, method="update", protect=[0, 1, 4], progress=False) == [2, 3]


def test_bad_input_is_refused_before_any_work():
    model, data = planted("llama"), batches()
    before = state(model)
    with pytest.raises(ValueError, match="method must be one of 'cka', 'influence'.*got 'magic'"):
        choose_blocks(model, data, 1, method="magic")
    with pytest.raises(ValueError, match="n=5 would remove every removable block"):
        choose_blocks(model, data, 5)
    with pytest.raises(ValueError, match=r"n=4, but protect='ends' leaves 3 candidate blocks"):
        choose_blocks(model, data, 4)
    with pytest.raises(ValueError, match="protect: blocks \\[9\\] are not in 0..4"):
        choose_blocks(model, data, 1, protect=[9])
    with pytest.raises(ValueError, match="batch 0 is a Tensor"):
        choose_blocks(model, [torch.ones(2, 8, dtype=torch.long)], 1)
    with pytest.raises(ValueError, match="without a 2-D input_ids"):
        choose_blocks(model, [{"inputs_embeds": torch.ones(2, 8, 32)}], 1)
    with pytest.raises(TypeError, match="list of dict batches"):
        rank_blocks(model, torch.ones(2, 8, dtype=torch.long), "cka")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_loss_methods_refuse_an_encoder():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64)
    bert = transformers.BertModel(config).eval()
    with pytest.raises(ValueError, match="needs a causal \\(decoder-only\\) language model.*BertModel of model_type 'bert'"):
        rank_blocks(bert, batches(), "loo")

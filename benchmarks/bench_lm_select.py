"""Which blocks of SmolLM2-135M to remove: every block-choice method at n = 4 and n = 8.

    python benchmarks/bench_lm_select.py [--quick] [--calib-windows 16] [--heldout-texts 50]

For every method of ``mpruner.lm.choose_blocks`` (and MPruner's CKA clusters for reference):
the chosen blocks, the held-out perplexity ratio unhealed, the same with the removed runs
replaced by a fitted linear map (``linear_replacement``), and the seconds the choice took.
Then the damage of removing each of the 30 blocks alone, on the held-out text, and the
Spearman rank correlation of each per-block signal with it. Calibration windows come from
the training part of the Wikipedia summaries, the held-out text from its test part (the last
400 summaries; ``--heldout-texts`` of them). Writes ``lm_select.json`` and ``lm_select.png``;
goals are reported, never asserted:

- n = 8: the ``auto`` choice unhealed <= 2.5x the original perplexity, with linear
  replacement <= 2.0x; n = 4 unhealed <= 1.35x;
- normalized CKA's Spearman correlation with the single-block damage >= 0.85;
- choosing 8 blocks (greedy included) within 15 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_analysis import machine_info  # noqa: E402

import mpruner  # noqa: E402
from mpruner import data  # noqa: E402
from mpruner.analysis.layers import resolve_layers  # noqa: E402
from mpruner.lm import choose_blocks, linear_replacement, rank_blocks  # noqa: E402
from mpruner.lm.signals import block_signals  # noqa: E402
from mpruner.lm.select import AUTO, METHODS  # noqa: E402
from mpruner.prune.strategies import cka_cluster_blocks  # noqa: E402

SWEEP_WINDOWS = (8, 64, 256)  # the linear replacement of auto's n = 8 choice, fitted on more and more tokens
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties), in plain torch."""
    def ranks(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # ties share their mean rank
            tie = x == v
            r[tie] = r[tie].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def load(args):
    import transformers

    path = data.smollm2(progress=False)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    windows_needed = max(args.calib_windows, args.replace_windows, max(SWEEP_WINDOWS))
    train = data.wikipedia_summaries("train", limit=windows_needed * args.seq_len // 40 + 20)
    windows = data.lm_batches(train, tok, seq_len=args.seq_len, batch_size=args.batch_size)
    windows = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in windows]
    calib = windows[: max(1, args.calib_windows // args.batch_size)]
    held = data.corpus_ids(data.wikipedia_summaries("test", limit=args.heldout_texts), tok)
    return model, tok, calib, windows, held


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib-windows", type=int, default=16, help="calibration windows of --seq-len tokens")
    p.add_argument("--replace-windows", type=int, default=64,
                   help="windows the linear replacement is fitted on (it needs >= 8 tokens per dimension)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--heldout-texts", type=int, default=50, help="held-out summaries for the perplexities")
    p.add_argument("--n", default="4,8", help="numbers of blocks to remove")
    p.add_argument("--methods", default=",".join(METHODS + ("cka-clusters",)))
    p.add_argument("--quick", action="store_true", help="n = 2, a few methods and texts: a smoke run")
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.methods, args.heldout_texts, args.calib_windows, args.replace_windows = "2", "cka,loo", 6, 4, 8
    model, tok, calib, windows, held = load(args)
    fit = windows[: max(1, args.replace_windows // args.batch_size)]
    blocks = model.model.layers
    ppl = lambda m: mpruner.perplexity(m, held, seq_len=256, batch_size=8, tokenizer=tok,  # noqa: E731
                                       progress=False).perplexity
    t = time.perf_counter()
    base = ppl(model)
    eval_seconds = time.perf_counter() - t
    print(f"SmolLM2-135M: {len(blocks)} blocks, held-out perplexity {base:.3f} ({held.numel()} tokens, "
          f"{eval_seconds:.0f} s per evaluation)", flush=True)
    result = {"machine": machine_info("cpu"), "config": vars(args), "ppl_original": base,
              "heldout_tokens": int(held.numel()), "calib_tokens": int(sum(b["attention_mask"].sum() for b in calib)),
              "auto": AUTO, "choices": [], "single_block": {}}

    def save():
        os.makedirs(args.out, exist_ok=True)
        name = "lm_select_quick.json" if args.quick else "lm_select.json"
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(result, f, indent=1)

    # Every per-block signal once (the scores do not depend on n), with their time; the similarity
    # signals also without each sequence's first token (the attention-sink position).
    signals, signal_seconds = {}, {}
    selection = resolve_layers(model, "auto")
    for skip_first in (False, True):
        t = time.perf_counter()
        found = block_signals(model, calib, selection, "rms", skip_first, progress=False)
        for name, scores in found.items():
            signals[name + ("-skip-first" if skip_first else "")] = scores.tolist()
        signal_seconds["similarity" + ("-skip-first" if skip_first else "")] = time.perf_counter() - t
    if "loo" in args.methods.split(","):
        t = time.perf_counter()
        signals["loo"] = rank_blocks(model, calib, "loo", protect="ends", progress=False).tolist()
        signal_seconds["loo"] = time.perf_counter() - t
    print(f"  signals: {signal_seconds}", flush=True)
    result["signals"], result["signal_seconds"] = signals, signal_seconds
    for n in [int(v) for v in args.n.split(",")]:
        for method in args.methods.split(","):
            t = time.perf_counter()
            if method == "cka-clusters":
                a = mpruner.analyze(model, calib, view="tokens", progress=False)
                chosen = cka_cluster_blocks(a.cka, n, set(range(1, len(blocks) - 1)))
            else:
                chosen = choose_blocks(model, calib, n, method=method, progress=False)
            seconds = time.perf_counter() - t
            pruned = mpruner.remove_layers(model, {"model.layers": chosen})
            unhealed = ppl(pruned) / base
            replaced = None
            if chosen[0] > 0:
                replaced = ppl(linear_replacement(model, chosen, fit)) / base
            row = {"n": n, "method": method, "blocks": chosen, "ratio_unhealed": unhealed,
                   "ratio_linear": replaced, "seconds": seconds}
            result["choices"].append(row)
            print(f"  n={n} {method:<13} {chosen}  unhealed {unhealed:.3f}x  linear "
                  f"{'-' if replaced is None else f'{replaced:.3f}x'}  ({seconds:.0f} s)", flush=True)
            save()
    auto8 = next((r for r in result["choices"] if r["n"] == 8 and r["method"] == AUTO), None)
    if auto8 is not None and auto8["blocks"][0] > 0:
        result["replacement_tokens"] = []
        for w in SWEEP_WINDOWS:
            part = windows[: max(1, w // args.batch_size)]
            tokens = int(sum(b["attention_mask"].sum() for b in part))
            ratio = ppl(linear_replacement(model, auto8["blocks"], part)) / base
            result["replacement_tokens"].append({"tokens": tokens, "ratio_linear": ratio})
            print(f"  linear replacement of {auto8['blocks']} from {tokens} tokens: {ratio:.3f}x", flush=True)
        save()
    if not args.quick:
        damage = []
        for i in range(len(blocks)):
            damage.append(ppl(mpruner.remove_layers(model, {"model.layers": [i]})) / base)
            print(f"  block {i} alone: {damage[-1]:.3f}x", flush=True)
        result["single_block"] = {"ratio": damage}
        inner = list(range(1, len(blocks) - 1))  # the ends are protected: rank the candidates
        result["spearman"] = {m: spearman([v[i] for i in inner], [damage[i] for i in inner])
                              for m, v in signals.items()}
        result["goals"] = goals(result)
        plot(result, os.path.join(args.out, "lm_select.png"))
    result["machine"]["load_average_end"] = os.getloadavg()
    save()
    print(json.dumps(result.get("goals", {}), indent=1))


def goals(result) -> dict:
    row = {(r["n"], r["method"]): r for r in result["choices"]}
    auto8, auto4 = row.get((8, result["auto"])), row.get((4, result["auto"]))
    greedy8 = row.get((8, "greedy"))
    out = {}
    if auto8:
        out["n8_auto_unhealed"] = {"goal": 2.5, "value": auto8["ratio_unhealed"], "met": auto8["ratio_unhealed"] <= 2.5}
        if auto8["ratio_linear"] is not None:
            out["n8_auto_linear"] = {"goal": 2.0, "value": auto8["ratio_linear"], "met": auto8["ratio_linear"] <= 2.0}
    if auto4:
        out["n4_auto_unhealed"] = {"goal": 1.35, "value": auto4["ratio_unhealed"],
                                   "met": auto4["ratio_unhealed"] <= 1.35}
    if "cka" in result.get("spearman", {}):
        out["cka_spearman"] = {"goal": 0.85, "value": result["spearman"]["cka"],
                               "met": result["spearman"]["cka"] >= 0.85}
    if greedy8:
        out["greedy8_seconds"] = {"goal": 900, "value": greedy8["seconds"], "met": greedy8["seconds"] <= 900}
    return out


def plot(result, path) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    damage = result["single_block"]["ratio"]
    left.bar(range(len(damage)), damage, color="grey")
    left.set_yscale("log")
    left.set_xlabel("block removed alone")
    left.set_ylabel("held-out perplexity / original")
    left.set_title("single-block damage, SmolLM2-135M")
    rows = [r for r in result["choices"] if r["n"] == 8]
    names = [r["method"] for r in rows]
    x = range(len(rows))
    right.bar([i - 0.2 for i in x], [r["ratio_unhealed"] for r in rows], width=0.4, label="removed")
    right.bar([i + 0.2 for i in x], [r["ratio_linear"] or float("nan") for r in rows], width=0.4,
              label="linear replacement")
    right.set_xticks(list(x))
    right.set_xticklabels(names, rotation=45, ha="right")
    right.set_yscale("log")
    right.set_ylabel("held-out perplexity / original")
    right.set_title("8 of 30 blocks removed, no healing")
    right.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()

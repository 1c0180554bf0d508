"""The Markdown body of the model card (:mod:`mpruner.surgery.card` writes the front matter)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch.nn as nn

# pipeline_tag -> the transformers Auto class that loads such a folder.
AUTO_CLASSES = {"text-generation": "AutoModelForCausalLM", "text2text-generation": "AutoModelForSeq2SeqLM",
                "text-classification": "AutoModelForSequenceClassification",
                "token-classification": "AutoModelForTokenClassification", "fill-mask": "AutoModelForMaskedLM",
                "question-answering": "AutoModelForQuestionAnswering",
                "image-classification": "AutoModelForImageClassification"}


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _removed_section(meta: dict, record: Optional[dict]) -> List[str]:
    numbers = meta["mpruner"]
    lines = ["## What was removed", ""]
    blocks: Dict[str, List[int]] = numbers.get("removed_blocks", {})
    original = (record or {}).get("original", {})
    if blocks:
        for name, indices in blocks.items():
            before = original.get(name)
            after = None if before is None else before - len(indices)
            label = f"`{name}`" if name else "the model"
            lines.append(f"- Blocks of {label}: {_num(before)} → {_num(after)}; removed (indices in the original "
                         f"model): {', '.join(map(str, indices))}.")
    else:
        lines.append("- Blocks: none removed.")
    widths = (record or {}).get("width", [])
    if widths:
        modules = sorted({name for w in widths for name in w.get("modules", {})})
        shown = ", ".join(f"`{m}`" for m in modules[:8]) + (f" and {len(modules) - 8} more" if len(modules) > 8 else "")
        lines.append(f"- Widths: {len(modules)} module(s) narrowed (width pruning): {shown}.")
    else:
        lines.append("- Widths: unchanged.")
    lines.append(f"- Sparsity: {100 * numbers['weight_sparsity']:.2f}% of the weights of the linear and "
                 "convolution layers are zero.")
    return lines + [""]


def _metrics_section(summary: dict) -> List[str]:
    name = summary.get("metric") or "metric"
    lines = ["## Metrics", ""]
    stages = summary.get("stages")
    if stages:
        lines += ["| stage | result | metric | parameters | non-zero |", "|---|---|---|---|---|"]
        for s in stages:
            lines.append(f"| {s.get('name')} | {'accepted' if s.get('accepted') else 'rolled back'} | "
                         f"{_num(s.get('metric'))} | {_num(s.get('params'))} | {_num(s.get('nonzero'))} |")
        lines.append("")
    if summary.get("metric_before") is None and summary.get("metric_after") is None:
        return lines + ["Not measured when this folder was saved.", ""] if not stages else lines
    lines += [f"| {name} | before | after |", "|---|---|---|",
              f"| {'higher' if summary.get('higher_is_better', True) else 'lower'} is better | "
              f"{_num(summary.get('metric_before'))} | {_num(summary.get('metric_after'))} |", ""]
    if summary.get("tolerance") is not None:
        lines += [f"Accepted within a tolerance of {_num(summary['tolerance'])} "
                  f"({summary.get('tolerance_mode', 'absolute')}) of the original model's metric.", ""]
    return lines


def _recipe_section(recipe: Optional[dict], command: Optional[str], summary: dict) -> List[str]:
    lines = ["## Recipe", ""]
    if command:
        lines += ["The command line:", "", "```bash", command, "```", ""]
    if recipe:
        lines += ["Options:", ""] + [f"- `{k}`: `{v!r}`" for k, v in recipe.items()] + [""]
    if summary.get("stop_reason"):
        lines += [f"Stopped: {summary['stop_reason']}.", ""]
    if not command and not recipe and not summary.get("stop_reason"):
        lines += ["Saved with `mpruner.save_pruned`; the run's options were not recorded.", ""]
    return lines


def _loading_section(meta: dict, model: nn.Module) -> List[str]:
    lines = ["## Loading", ""]
    if meta.get("library_name") == "transformers":
        auto = AUTO_CLASSES.get(meta.get("pipeline_tag"), "AutoModel")
        lines += ["A plain Hugging Face folder: no mpruner needed.", "", "```python",
                  f"from transformers import {auto}", "", f'model = {auto}.from_pretrained("path/to/this/folder")',
                  "```", ""]
    else:
        lines += ["The weights and the removal record (`model.safetensors`, `mpruner.json`) rebuild the model "
                  "from its original architecture:", "", "```python", "import mpruner", "",
                  f'model = mpruner.load_pruned("path/to/this/folder", lambda: {type(model).__name__}(...))',
                  "```", ""]
    return lines


def body(model: nn.Module, meta: dict, summary: dict, record: Optional[dict], *, recipe: Optional[dict],
         command: Optional[str], title: Optional[str], versions: Dict[str, str]) -> str:
    numbers = meta["mpruner"]
    base = meta.get("base_model") or summary.get("model_source")
    heading = title or (f"{base} (pruned with mpruner)" if base else f"{type(model).__name__} (pruned with mpruner)")
    lines = [f"# {heading}", ""]
    stages = [t for t in meta.get("tags", []) if t not in ("pruned", "mpruner")]
    lines += [f"A `{type(model).__name__}`" + (f" made from `{base}`" if base else "") + " by mpruner"
              + (f" (stages: {', '.join(stages)})" if stages else "") + ". Depth pruning removes whole blocks "
              "that repeat their neighbours' work (MPruner, arXiv 2408.13482); every stage is accepted only "
              "if the metric stays within tolerance of the original model's.", ""]
    lines += _removed_section(meta, record)
    lines += _metrics_section(summary)
    before, after = numbers.get("params_before"), numbers["params_after"]
    change = f" ({100 * (after - before) / before:+.1f}%)" if before else ""
    lines += ["## Parameters", "", f"{_num(before) if before else 'unknown'} before, {_num(after)} after{change}.",
              ""]
    lines += _recipe_section(recipe, command, summary)
    lines += _loading_section(meta, model)
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    return "\n".join(lines)

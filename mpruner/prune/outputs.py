"""Writes a pruning run's outputs: summary.json, history, heatmaps, the pruned model."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..surgery import save_pruned, write_model_card
from .loop import PruneResult
from .options import PruneOptions


def save_model(model: nn.Module, path: Path) -> str:
    """``save_pretrained`` for Hugging Face models (plain ``from_pretrained`` reloads them),
    ``mpruner.save_pruned`` otherwise. Returns how it was saved."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(path))
        return "save_pretrained"
    save_pruned(model, path)
    return "save_pruned"


def recipe(options: PruneOptions) -> dict:
    """The options of a run as a model card lists them: those that are plain values (not the
    example inputs, not callables), ``None`` left out."""
    out = {}
    for name, value in vars(options).items():
        if name in ("example_inputs", "checkpoint_dir", "progress", "verbose") or value is None:
            continue
        if isinstance(value, (str, int, float, bool)) or (isinstance(value, dict) and all(
                isinstance(v, (str, int, float, bool, type(None))) for v in value.values())):
            out[name] = value
    return out


def write_report(result: PruneResult, out: os.PathLike, extra: Optional[dict] = None, heatmaps: bool = True,
                 tokenizer=None, card: Optional[dict] = None) -> dict:
    """Writes ``summary.json``, ``summary.txt``, ``history.json``, ``iter-<attempt>.png`` and ``model/`` into ``out``.

    ``tokenizer`` (or a processor: anything with ``save_pretrained``) is saved beside the
    model, so ``model/`` reloads as a usable model (``AutoTokenizer.from_pretrained(out/model)``).
    ``model/README.md`` is its model card, with the numbers of ``summary.json`` (``card``: more
    keyword arguments of :func:`mpruner.surgery.model_card`: ``recipe``, ``command``, ``base_model``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if heatmaps:
        from ..analysis import Analysis

        for h in result.history:
            path = out / f"iter-{h.iteration:03d}.png"
            title = (f"attempt {h.iteration}: k={h.granularity}, {h.score_name} {h.threshold:.3f}, remove {h.removed} "
                     f"({'accepted' if h.accepted else 'rolled back'})")
            matrix = Analysis(torch.tensor(h.cka, dtype=torch.float64), h.layer_names, 0, metric=h.similarity)
            matrix.plot(str(path), clusters=h.clusters if h.similarity == "cka" else None, title=title)
            files.setdefault("heatmaps", []).append(path.name)
    files["model"] = "model"
    saved_with = save_model(result.model, out / "model")
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out / "model"))
        files["tokenizer"] = "model"
    summary = {
        "layers_before": result.layers_before, "layers_after": result.layers_after,
        "params_before": result.params_before, "params_after": result.params_after,
        "metric_before": result.metric_before, "metric_after": result.metric_after,
        "tolerance": result.tolerance, "tolerance_mode": result.tolerance_mode,
        "removed": [h.removed_names for h in result.history if h.accepted],
        "attempts": len(result.history), "accepted": sum(h.accepted for h in result.history),
        "stop_reason": result.stop_reason, "seconds": result.seconds, "model_saved_with": saved_with,
        "stats_before": result.stats_before, "stats_after": result.stats_after, "files": files,
    }
    if extra:
        summary.update(extra)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    write_model_card(out / "model", result.model, summary, **(card or {}))
    with open(out / "history.json", "w") as f:
        json.dump([h.report() for h in result.history], f, indent=1)
    (out / "summary.txt").write_text(result.summary() + "\n")
    return summary

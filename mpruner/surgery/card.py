"""The model card of a saved pruned model: ``README.md`` with Hugging Face YAML metadata.

Hugging Face's convention for a model folder: a README whose front matter (YAML between two
``---`` lines) carries ``base_model``, ``library_name``, ``pipeline_tag`` and ``tags``, then a
Markdown body. mpruner's card adds, under the ``mpruner`` key of the metadata, the numbers of
the run (metric before and after, parameters and blocks before and after, the removed
blocks), and in the body what was removed (blocks, widths, sparsity), the metrics, the recipe
(options, the command line), the parameter counts and the versions that made it.

The front matter is written without a YAML library: every string is a JSON string (a valid
YAML double-quoted scalar) and every float keeps a decimal point, so YAML 1.1 readers (PyYAML,
as ``huggingface_hub.ModelCard.load`` uses) read back exactly the numbers of the summary.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..stacklevel import user_stacklevel
from ..version import __version__
from .record import get_record

CARD_NAME = "README.md"
MARKER = "<!-- written by mpruner: rewritten when the model is saved again -->"
# Model class suffix -> the Hub's pipeline_tag for it.
PIPELINE_TAGS = (("ForCausalLM", "text-generation"), ("LMHeadModel", "text-generation"),
                 ("ForConditionalGeneration", "text2text-generation"),
                 ("ForSequenceClassification", "text-classification"),
                 ("ForTokenClassification", "token-classification"), ("ForMaskedLM", "fill-mask"),
                 ("ForQuestionAnswering", "question-answering"), ("ForImageClassification", "image-classification"))
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------- YAML
def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string; 1.0e-05 as a float
            mantissa += ".0"
        return mantissa + (f"e{exponent}" if exponent else "")
    return json.dumps(str(value), ensure_ascii=False)


def _key(key) -> str:
    key = str(key)
    return key if _PLAIN_KEY.fullmatch(key) and key.lower() not in ("true", "false", "null", "yes", "no", "on", "off") \
        else json.dumps(key)


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML of dicts (string keys), lists and scalars."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}"
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_key(key)}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{_key(key)}: {to_yaml(item).strip()}")
        return "\n".join(lines)
    if isinstance(value, (list, tuple)):
        if not value:
            return pad + "[]"
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = to_yaml(item, indent + 2).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {to_yaml(item).strip()}")
        return "\n".join(lines)
    return pad + _scalar(value)


# ---------------------------------------------------------------- what the model says about itself
def is_hf_model(model: nn.Module) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(getattr(model, "config", None), "to_dict")


def guess_base_model(model: nn.Module) -> Optional[str]:
    """The Hub id the model was loaded from (``config._name_or_path``), or None for a local folder."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if isinstance(name, str) and _HUB_ID.fullmatch(name) and not os.path.exists(name):
        return name
    return None


def guess_pipeline_tag(model: nn.Module) -> Optional[str]:
    names = [type(model).__name__] + list(getattr(getattr(model, "config", None), "architectures", None) or [])
    for name in names:
        for suffix, tag in PIPELINE_TAGS:
            if name.endswith(suffix):
                return tag
    return None


def removed_blocks(record: Optional[dict]) -> Dict[str, List[int]]:
    """Block list -> the ORIGINAL indices of the blocks removed, from a removal record (whose
    steps hold the indices as of each step)."""
    if not record:
        return {}
    remaining = {name: list(range(count)) for name, count in record.get("original", {}).items()}
    removed: Dict[str, List[int]] = {}
    for step in record.get("steps", []):
        for name, indices in step.items():
            left = remaining.get(name, [])
            gone = {left[i] for i in indices if 0 <= i < len(left)}
            removed.setdefault(name, []).extend(sorted(gone))
            remaining[name] = [j for j in left if j not in gone]
    return {name: sorted(v) for name, v in removed.items() if v}


def weight_sparsity(model: nn.Module) -> float:
    """The share of zeros among the weights of the linear and convolution layers."""
    zeros = total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or type(module).__name__ == "Conv1D":
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
                zeros += int((weight == 0).sum())
                total += weight.numel()
    return zeros / total if total else 0.0


def _versions() -> Dict[str, str]:
    out = {"mpruner": __version__, "torch": torch.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------- the card
def card_metadata(model: nn.Module, summary: Optional[dict] = None, *, base_model: Optional[str] = None,
                  pipeline_tag: Optional[str] = None, stages: Sequence[str] = ("depth",)) -> dict:
    """The YAML front matter as a dict (see :func:`model_card`)."""
    summary = dict(summary or {})
    record = get_record(model)
    meta: Dict = {}
    base = base_model or guess_base_model(model)
    if base:
        meta["base_model"] = base
    if is_hf_model(model):
        meta["library_name"] = "transformers"
    tag = pipeline_tag or guess_pipeline_tag(model)
    if tag:
        meta["pipeline_tag"] = tag
    meta["tags"] = ["pruned", "mpruner", *[s for s in stages if s not in ("pruned", "mpruner")]]
    numbers: Dict = {}
    for key in ("metric", "metric_before", "metric_after", "higher_is_better", "tolerance", "tolerance_mode",
                "layers_before", "layers_after", "params_before"):
        if summary.get(key) is not None:
            numbers[key] = summary[key]
    numbers["params_after"] = sum(p.numel() for p in model.parameters())
    numbers["weight_sparsity"] = weight_sparsity(model)
    blocks = removed_blocks(record)
    if blocks:
        numbers["removed_blocks"] = blocks
    if summary.get("removed"):
        numbers["removed"] = summary["removed"]
    if summary.get("stages"):
        numbers["stages"] = [{k: s.get(k) for k in ("name", "accepted", "metric", "params", "nonzero")}
                             for s in summary["stages"]]
    meta["mpruner"] = numbers
    return meta


def model_card(model: nn.Module, summary: Optional[dict] = None, *, base_model: Optional[str] = None,
               pipeline_tag: Optional[str] = None, stages: Sequence[str] = ("depth",),
               recipe: Optional[dict] = None, command: Optional[str] = None, title: Optional[str] = None) -> str:
    """The text of ``README.md`` for ``model`` as saved.

    Args:
        model: the pruned model; its removal record gives the removed blocks and widths.
        summary: the run's numbers, under the names of ``summary.json``: ``metric`` (what the
            metric is), ``metric_before``, ``metric_after``, ``higher_is_better``, ``tolerance``,
            ``layers_before``/``after``, ``params_before``, ``removed``, ``stages`` (a pipeline's).
        base_model: the Hub id of the original model (default: from ``config._name_or_path``
            when it is one).
        pipeline_tag: the Hub task (default: from the model class, e.g. ``text-generation``).
        stages: the stages that ran (tags beside ``pruned`` and ``mpruner``).
        recipe: the options of the run; command: its command line.
    """
    from .card_body import body

    meta = card_metadata(model, summary, base_model=base_model, pipeline_tag=pipeline_tag, stages=stages)
    text = body(model, meta, dict(summary or {}), get_record(model), recipe=recipe, command=command, title=title,
                versions=_versions())
    return f"---\n{to_yaml(meta)}\n---\n{MARKER}\n\n{text.strip()}\n"


def write_model_card(directory, model: nn.Module, summary: Optional[dict] = None, **card) -> Optional[Path]:
    """Writes ``directory/README.md`` (atomically); returns its path.

    A README.md already there that mpruner did not write (no marker line) is kept, with a
    warning, and None is returned: the folder's owner wrote it. ``card``: the keyword
    arguments of :func:`model_card`.
    """
    path = Path(directory) / CARD_NAME
    if path.is_file():
        try:
            ours = MARKER in path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            warnings.warn(f"{path} exists and was not written by mpruner; kept as it is (no model card written)",
                          UserWarning, stacklevel=user_stacklevel())
            return None
    text = model_card(model, summary, **card)
    tmp = path.with_name(f".{CARD_NAME}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

"""LoRA healing through ``peft``: wrap, train the adapters only, merge them back.

After :func:`merge_lora` the model is the same object as before :func:`wrap_lora`, a
plain Hugging Face model again (no adapter modules, no peft config), so it saves with
``save_pretrained`` and reloads with ``from_pretrained``. ``peft`` is optional:
``pip install 'mpruner[lm]'`` (or ``pip install peft``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch.nn as nn

_HELP = "LoRA healing needs the peft package: pip install 'mpruner[lm]' (or: pip install peft)"
LORA_KEYS = ("r", "alpha", "target_modules", "dropout", "bias", "modules_to_save")


def require_peft():
    try:
        import peft
    except ImportError as exc:
        raise ImportError(f"{_HELP} ({exc})") from None
    return peft


def check_lora_options(lora: Dict) -> Dict:
    """``lora`` as LoraConfig arguments; unknown keys are an error naming the known ones."""
    if not isinstance(lora, dict):
        raise TypeError(f"lora must be a dict such as dict(r=8, alpha=16, target_modules=[...]), got "
                        f"{type(lora).__name__}")
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"unknown lora option(s) {unknown}; known: {', '.join(LORA_KEYS)}")
    r = lora.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"lora r must be an integer >= 1, got {r!r}")
    return {"r": r, "lora_alpha": lora.get("alpha", 2 * r), "target_modules": lora.get("target_modules"),
            "lora_dropout": float(lora.get("dropout", 0.0)), "bias": lora.get("bias", "none"),
            "modules_to_save": lora.get("modules_to_save")}


def wrap_lora(model: nn.Module, r: int = 8, alpha: Optional[float] = None,
              target_modules: Optional[Sequence[str]] = None, dropout: float = 0.0, **extra):
    """``model`` with LoRA adapters (a ``peft`` model); only the adapters require gradients.

    ``target_modules``: module names to adapt (default: peft's choice for the architecture,
    e.g. ``q_proj``/``v_proj`` for LLaMA; models peft does not know need it).
    Returns ``(peft_model, saved_requires_grad)`` for :func:`merge_lora`.
    """
    peft = require_peft()
    options = check_lora_options(dict(r=r, alpha=alpha if alpha is not None else 2 * r,
                                      target_modules=target_modules, dropout=dropout, **extra))
    saved = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        config = peft.LoraConfig(**options)
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(f"peft could not add LoRA adapters to {type(model).__name__}: {exc}; pass "
                         "lora=dict(target_modules=[...names of its linear layers...])") from None
    return wrapped, saved


def merge_lora(wrapped, saved_requires_grad: Dict[str, bool]) -> nn.Module:
    """Merge the adapters into the weights (``merge_and_unload``); the plain model, trainable as before."""
    model = wrapped.merge_and_unload()
    for name, p in model.named_parameters():
        p.requires_grad_(saved_requires_grad.get(name, True))
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(model):
            delattr(model, attr)
    return model

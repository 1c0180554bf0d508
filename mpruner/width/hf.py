"""Width pruning of Hugging Face models by their family's layout: which layers are pruning roots,
and the config and attention-module attributes to repair afterwards so that plain
``from_pretrained`` reloads.

What differs between families (module names, config fields, whether heads may shrink) is not
written here: each family's adapter declares it as a :class:`~mpruner.adapters.WidthLayout`,
looked up with :func:`mpruner.adapters.family_traits`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..adapters import AttentionLayout, WidthLayout, family_traits, width_model_types


def layout_of(model: nn.Module) -> Optional[WidthLayout]:
    """The width layout of a Hugging Face model's family; None for a model without
    ``config.model_type``. Raises ValueError for a family whose adapter declares none."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        return None
    traits = family_traits(model)
    if traits is None or traits.width is None:
        raise ValueError(f"prune_width knows the Hugging Face families {sorted(width_model_types())}; model_type "
                         f"{model_type!r} is not one of them (for other models pass a non-HF nn.Module)")
    return traits.width


def _named(model, suffixes) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if any(n.endswith(s) for s in suffixes)]


def mlp_roots(model: nn.Module, layout: WidthLayout) -> List[nn.Module]:
    """The up-projections whose output channels are the MLP width (their group holds the rest)."""
    return [m for _, m in _named(model, layout.mlp_roots)]


def attention_modules(model: nn.Module, layout: WidthLayout):
    """``(attention module, q, k, v)`` per layer, for a layout with separate projections."""
    a = layout.attention
    if a is None:
        return []
    return [(m, getattr(m, a.q), getattr(m, a.k), getattr(m, a.v)) for n, m in model.named_modules()
            if n.endswith(a.module_suffix)]


def mlps(model: nn.Module, layout: WidthLayout) -> List[nn.Module]:
    """The MLP module of every layer (hidden in, hidden out), for a layout pruned MLP by MLP."""
    return [m for n, m in model.named_modules() if n.endswith(layout.mlp_module) and hasattr(m, layout.mlp_marker)]


def mlp_output(mlp: nn.Module, layout: WidthLayout) -> nn.Module:
    return getattr(mlp, layout.mlp_output)


def prune_heads(tp, attn: nn.Module, names: AttentionLayout, ratio: float, hidden: int) -> None:
    """Removes whole key/value head groups (a KV head and the query heads that share it; one head
    each without GQA), the lowest L2 norm of their q/k/v rows and o columns, with Torch-Pruning's
    prune functions. The same count goes in every layer: round(ratio * KV heads), at least one stays,
    moved to the nearest count whose query heads divide hidden_size (transformers' configs insist)."""
    q, k, v, o = (getattr(attn, name) for name in (names.q, names.k, names.v, names.o))
    hd = attn.head_dim
    heads, kv = q.out_features // hd, k.out_features // hd
    per = heads // kv
    target = kv - int(round(ratio * kv))
    valid = [u for u in range(1, kv + 1) if hidden % (u * per) == 0]
    drop = kv - min(valid, key=lambda u: (abs(u - target), -u))
    if drop <= 0:
        return
    with torch.no_grad():
        qn = q.weight.pow(2).sum(1).reshape(kv, per * hd).sum(1) + o.weight.pow(2).sum(0).reshape(kv, per * hd).sum(1)
        kvn = k.weight.pow(2).sum(1).reshape(kv, hd).sum(1) + v.weight.pow(2).sum(1).reshape(kv, hd).sum(1)
    groups = sorted(torch.argsort(qn + kvn, stable=True)[:drop].tolist())
    q_idx = [c for g in groups for c in range(g * per * hd, (g + 1) * per * hd)]
    kv_idx = [c for g in groups for c in range(g * hd, (g + 1) * hd)]
    tp.prune_linear_out_channels(q, q_idx)
    tp.prune_linear_out_channels(k, kv_idx)
    tp.prune_linear_out_channels(v, kv_idx)
    tp.prune_linear_in_channels(o, q_idx)


def conv1d_to_linear(model: nn.Module) -> Dict[str, nn.Module]:
    """Swaps every GPT-2 ``Conv1D`` for an equivalent ``nn.Linear`` (Torch-Pruning knows Linear);
    returns the names swapped."""
    swapped = {}
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            nx, nf = module.weight.shape
            linear = nn.Linear(nx, nf, bias=module.bias is not None, device=module.weight.device,
                               dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            _set(model, name, linear)
            swapped[name] = type(module)
    return swapped


def linear_to_conv1d(model: nn.Module, swapped: Dict[str, type]) -> None:
    for name, cls in swapped.items():
        linear = model.get_submodule(name)
        conv = cls(linear.out_features, linear.in_features)
        conv.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.t())
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)
        _set(model, name, conv)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _uniform(values: List[int], what: str) -> int:
    if len(set(values)) != 1:
        raise ValueError(f"width pruning left different {what} per layer ({sorted(set(values))}); a Hugging Face "
                         "config holds one value: use the same ratio for every layer (global pruning off)")
    return values[0]


def repair(model: nn.Module, layout: WidthLayout, head_dim: Optional[int], prune_hidden: bool) -> Dict[str, int]:
    """Writes the new sizes into the config and the attention modules; returns what changed."""
    config = model.config
    changed = {}
    roots = mlp_roots(model, layout)
    width = _uniform([m.out_features if isinstance(m, nn.Linear) else m.weight.shape[1] for m in roots],
                     "MLP widths")
    setattr(config, layout.mlp_width_field, width)
    changed[layout.mlp_width_field] = width
    if layout.attention is not None:
        heads, kv = [], []
        for attn, q, k, _ in attention_modules(model, layout):
            head_dim = head_dim or attn.head_dim
            h, g = q.out_features // head_dim, k.out_features // head_dim
            attn.num_key_value_groups = h // g
            for attr, value in (("num_heads", h), ("num_attention_heads", h), ("num_key_value_heads", g)):
                if hasattr(attn, attr):
                    setattr(attn, attr, value)
            attn.head_dim = head_dim
            heads.append(h)
            kv.append(g)
        changed["num_attention_heads"] = config.num_attention_heads = _uniform(heads, "numbers of heads")
        changed["num_key_value_heads"] = config.num_key_value_heads = _uniform(kv, "numbers of key/value heads")
        changed["head_dim"] = config.head_dim = head_dim
    if prune_hidden:
        changed["hidden_size"] = config.hidden_size
    return changed

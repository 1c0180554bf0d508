"""Hidden-size (residual stream) pruning of Hugging Face models, one routine per family.

A family's adapter names its routine in ``WidthLayout.hidden_routine``; ``prune_width`` calls
``HIDDEN_ROUTINES[name](tp, model, ratio, round_to)``. Where the config derives the head size
from hidden_size / num_heads (BERT, GPT-2) the routine removes whole heads with the hidden
channels, so it neither needs Torch-Pruning's functions (``tp``) nor honours ``round_to``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn


def prune_hidden_llama(tp, model: nn.Module, ratio: float, round_to: Optional[int]) -> int:
    """Removes hidden-size channels (the residual stream) from a LLaMA-family model; returns the new size.

    The residual stream couples every tensor that reads or writes it: the token embedding (and a
    tied or separate ``lm_head``), every layer's two RMSNorm scales and the final norm, the inputs
    of q/k/v/gate/up and the outputs of o/down. A channel's importance is the L2 norm of all of
    them together (Torch-Pruning's grouped magnitude, computed here without tracing: tracing
    LLaMA's rotary/GQA graph takes minutes). The config carries ``head_dim``, so the heads keep
    their size and attention is unaffected. ``round(ratio * hidden)`` channels go (rounded so the
    rest is a multiple of ``round_to``, when given)."""
    config = model.config
    hidden = config.hidden_size
    keep = hidden - int(round(ratio * hidden))
    if round_to:
        keep = max(round_to, keep - keep % round_to)
    keep = max(1, keep)
    if keep >= hidden:
        return hidden
    body = model.model if hasattr(model, "model") else model
    layers = list(body.layers)
    readers = [m for layer in layers for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                                               layer.mlp.gate_proj, layer.mlp.up_proj)]
    writers = [m for layer in layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]
    norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)] + [body.norm]
    embed = body.embed_tokens
    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is embed.weight
    with torch.no_grad():
        score = embed.weight.double().pow(2).sum(0)
        for m in readers:
            score += m.weight.double().pow(2).sum(0)
        for m in writers:
            score += m.weight.double().pow(2).sum(1)
        for n in norms:
            score += n.weight.double().pow(2)
        if head is not None and not tied:
            score += head.weight.double().pow(2).sum(0)
    drop = sorted(torch.argsort(score, stable=True)[:hidden - keep].tolist())
    kept = torch.tensor(sorted(set(range(hidden)) - set(drop)), device=embed.weight.device)
    for m in readers:
        tp.prune_linear_in_channels(m, drop)
    for m in writers:
        tp.prune_linear_out_channels(m, drop)
    with torch.no_grad():
        for n in norms:
            n.weight = nn.Parameter(n.weight[kept].clone(), requires_grad=n.weight.requires_grad)
        embed.weight = nn.Parameter(embed.weight[:, kept].clone(), requires_grad=embed.weight.requires_grad)
        embed.embedding_dim = keep
        if head is not None:
            if tied:
                head.weight = embed.weight
            else:
                head.weight = nn.Parameter(head.weight[:, kept].clone(), requires_grad=head.weight.requires_grad)
            head.in_features = keep
    for layer in layers:  # modules that cache the width as an attribute
        for module in (layer, layer.self_attn, layer.mlp):
            if isinstance(getattr(module, "hidden_size", None), int):
                module.hidden_size = keep
    config.hidden_size = keep
    return keep


def _linears_by_role(model: nn.Module):
    """BERT-family Linear layers by what their in/out sides hold: the residual stream, the
    attention heads, or the MLP width."""
    roles = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if any(name.endswith(f".attention.self.{p}") for p in ("query", "key", "value")):
            roles[name] = ("residual", "heads")
        elif name.endswith(".attention.output.dense"):
            roles[name] = ("heads", "residual")
        elif name.endswith(".intermediate.dense"):
            roles[name] = ("residual", "mlp")
        elif name.endswith(".output.dense"):
            roles[name] = ("mlp", "residual")
        else:  # pooler, classifier, masked-LM head: their sides of the hidden size
            h = model.config.hidden_size
            roles[name] = ("residual" if m.in_features == h else "other", "residual" if m.out_features == h else "other")
    return roles


def _head_counts(hidden: int, heads: int, ratio: float) -> Tuple[int, int, int]:
    """(head size, heads kept, new hidden size) when ``round(ratio * heads)`` heads go (one stays)."""
    hd = hidden // heads
    keep = max(1, heads - int(round(ratio * heads)))
    return hd, keep, keep * hd


def prune_hidden_bert(tp, model: nn.Module, ratio: float, round_to: Optional[int] = None) -> Tuple[int, int]:
    """Removes ``round(ratio * heads)`` attention heads from every BERT/RoBERTa layer together
    with the matching share of the hidden size, so that ``hidden_size / num_attention_heads``
    (the head size these configs derive) stays the same and plain ``from_pretrained`` rebuilds
    the model. Heads: lowest L2 norm of their q/k/v rows and output columns, per layer.
    Hidden channels: lowest joint L2 norm over every tensor on the residual stream (embeddings,
    LayerNorms, the projections' residual sides, pooler and classifier inputs). Returns the
    new (hidden size, heads)."""
    config = model.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    hd, keep_heads, new_hidden = _head_counts(hidden, heads, ratio)
    if keep_heads == heads:
        return hidden, heads
    modules = dict(model.named_modules())
    roles = _linears_by_role(model)
    with torch.no_grad():
        score = torch.zeros(hidden, dtype=torch.float64, device=next(model.parameters()).device)
        for name, (inside, outside) in roles.items():
            w = modules[name].weight.double()
            if inside == "residual":
                score += w.pow(2).sum(0)
            if outside == "residual":
                score += w.pow(2).sum(1)
        for m in model.modules():
            if isinstance(m, nn.Embedding) and m.embedding_dim == hidden:
                score += m.weight.double().pow(2).sum(0)
            elif isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (hidden,):
                score += m.weight.double().pow(2)
    kept = torch.argsort(score, descending=True, stable=True)[:new_hidden].sort().values
    # Heads per layer: the attention block's q/k/v rows and output columns of each head.
    head_keep = {}
    for name, m in modules.items():
        if name.endswith(".attention.self"):
            q, k, v = m.query.weight, m.key.weight, m.value.weight
            o = modules[name[: -len(".self")] + ".output.dense"].weight
            with torch.no_grad():
                norms = sum(t.double().pow(2).sum(1).reshape(heads, hd).sum(1) for t in (q, k, v))
                norms = norms + o.double().pow(2).sum(0).reshape(heads, hd).sum(1)
            chosen = torch.argsort(norms, descending=True, stable=True)[:keep_heads].sort().values
            head_keep[name[: -len(".attention.self")]] = torch.cat([torch.arange(h * hd, (h + 1) * hd)
                                                                    for h in chosen.tolist()]).to(kept.device)
    replaced = {}  # id(old parameter) -> new parameter, so tied weights stay tied

    def cut(param: nn.Parameter, index: torch.Tensor, dim: int) -> nn.Parameter:
        key = (id(param), dim)
        if key not in replaced:
            replaced[key] = nn.Parameter(param.detach().index_select(dim, index).clone(),
                                         requires_grad=param.requires_grad)
        return replaced[key]

    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.embedding_dim == hidden:
            m.weight, m.embedding_dim = cut(m.weight, kept, 1), new_hidden
        elif isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (hidden,):
            m.weight, m.bias = cut(m.weight, kept, 0), (None if m.bias is None else cut(m.bias, kept, 0))
            m.normalized_shape = (new_hidden,)
    for name, (inside, outside) in roles.items():
        m = modules[name]
        layer = next((p for p in head_keep if name.startswith(p + ".")), None)
        index = {"residual": kept, "heads": head_keep.get(layer)}
        if inside in index and index[inside] is not None:
            m.weight = cut(m.weight, index[inside], 1)
            m.in_features = len(index[inside])
        if outside in index and index[outside] is not None:
            m.weight = cut(m.weight, index[outside], 0)
            if m.bias is not None:
                m.bias = cut(m.bias, index[outside], 0)
            m.out_features = len(index[outside])
    for name, m in modules.items():
        if name.endswith(".attention.self"):
            m.num_attention_heads, m.all_head_size = keep_heads, keep_heads * hd
    config.hidden_size, config.num_attention_heads = new_hidden, keep_heads
    return new_hidden, keep_heads


def prune_hidden_gpt2(tp, model: nn.Module, ratio: float, round_to: Optional[int] = None) -> Tuple[int, int]:
    """GPT-2's version of :func:`prune_hidden_bert`: ``round(ratio * heads)`` heads per layer and
    the same share of the residual stream, so ``n_embd / n_head`` stays. ``Conv1D`` weights are
    (in, out); the fused ``c_attn`` output is [q | k | v], each split by heads. Returns the new
    (hidden size, heads)."""
    config = model.config
    hidden, heads = config.n_embd, config.n_head
    hd, keep_heads, new_hidden = _head_counts(hidden, heads, ratio)
    if keep_heads == heads:
        return hidden, heads
    blocks = list(model.transformer.h)
    if any(hasattr(b, "crossattention") for b in blocks):
        raise ValueError("prune_hidden=True does not handle GPT-2 cross-attention blocks")
    with torch.no_grad():
        score = torch.zeros(hidden, dtype=torch.float64, device=model.transformer.wte.weight.device)
        for emb in (model.transformer.wte, model.transformer.wpe):
            score += emb.weight.double().pow(2).sum(0)
        for b in blocks:
            score += b.attn.c_attn.weight.double().pow(2).sum(1) + b.mlp.c_fc.weight.double().pow(2).sum(1)
            score += b.attn.c_proj.weight.double().pow(2).sum(0) + b.mlp.c_proj.weight.double().pow(2).sum(0)
            for ln in (b.ln_1, b.ln_2):
                score += ln.weight.double().pow(2)
        score += model.transformer.ln_f.weight.double().pow(2)
    kept = torch.argsort(score, descending=True, stable=True)[:new_hidden].sort().values

    def sliced(t, index, dim):
        return nn.Parameter(t.detach().index_select(dim, index.to(t.device)).clone(), requires_grad=t.requires_grad)

    for b in blocks:
        attn = b.attn
        w = attn.c_attn.weight  # (hidden, 3 * hidden)
        with torch.no_grad():
            parts = w.double().reshape(hidden, 3, heads, hd)
            norms = parts.pow(2).sum((0, 1, 3)) + attn.c_proj.weight.double().reshape(heads, hd, hidden).pow(2).sum((1, 2))
        chosen = torch.argsort(norms, descending=True, stable=True)[:keep_heads].sort().values
        head_idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in chosen.tolist()])
        qkv_idx = torch.cat([head_idx + part * hidden for part in range(3)])
        attn.c_attn.weight = sliced(sliced(w, kept, 0), qkv_idx, 1)
        attn.c_attn.bias = sliced(attn.c_attn.bias, qkv_idx, 0)
        attn.c_attn.nf = 3 * new_hidden
        attn.c_proj.weight = sliced(sliced(attn.c_proj.weight, head_idx, 0), kept, 1)
        attn.c_proj.bias = sliced(attn.c_proj.bias, kept, 0)
        attn.c_proj.nf = new_hidden
        b.mlp.c_fc.weight = sliced(b.mlp.c_fc.weight, kept, 0)
        b.mlp.c_proj.weight = sliced(b.mlp.c_proj.weight, kept, 1)
        b.mlp.c_proj.bias = sliced(b.mlp.c_proj.bias, kept, 0)
        b.mlp.c_proj.nf = new_hidden
        for ln in (b.ln_1, b.ln_2):
            ln.weight, ln.bias = sliced(ln.weight, kept, 0), sliced(ln.bias, kept, 0)
            ln.normalized_shape = (new_hidden,)
        attn.embed_dim, attn.num_heads, attn.split_size = new_hidden, keep_heads, new_hidden
    ln = model.transformer.ln_f
    ln.weight, ln.bias, ln.normalized_shape = sliced(ln.weight, kept, 0), sliced(ln.bias, kept, 0), (new_hidden,)
    wte = model.transformer.wte
    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is wte.weight
    for emb in (wte, model.transformer.wpe):
        emb.weight, emb.embedding_dim = sliced(emb.weight, kept, 1), new_hidden
    if head is not None:
        head.weight = wte.weight if tied else sliced(head.weight, kept, 1)
        head.in_features = new_hidden
    model.transformer.embed_dim = new_hidden
    config.n_embd, config.n_head = new_hidden, keep_heads
    return new_hidden, keep_heads


# The routines a WidthLayout may name, by their function names.
HIDDEN_ROUTINES: Dict[str, Callable] = {f.__name__: f for f in (prune_hidden_llama, prune_hidden_bert,
                                                                 prune_hidden_gpt2)}

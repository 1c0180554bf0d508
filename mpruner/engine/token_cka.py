"""Per-sequence (token) CKA, as MPruner's published code measures transformers.

The samples are the tokens of one sequence (padding excluded); the L x L matrix is
computed per sequence. On CPU one fused kernel takes each sequence as a task: it gathers
and centers the real tokens, builds the L Grams at the sequence's own length and reduces
them while they are in cache. Elsewhere all sequences and layers go through batched GEMMs
and one kernel call per memory-bounded group of sequences; groups hold sequences of
similar length (sorted), so padding wastes little work.
"""
from __future__ import annotations

import functools
import warnings
from typing import List, Optional

import torch

from ..stacklevel import user_stacklevel
from . import checks, precision as modes
from .cka import NonFiniteError
from .ops import ops

DEFAULT_GRAM_BYTES = 256 * 2**20


def _layer_list(hidden_states) -> List[torch.Tensor]:
    """The L (B, T, D_l) tensors, validated; nothing is copied."""
    if isinstance(hidden_states, torch.Tensor):
        if hidden_states.dim() != 4:
            raise ValueError("hidden_states as one tensor must be (L, B, T, D), got shape "
                             f"{tuple(hidden_states.shape)}; or pass a list of L tensors (B, T, D)")
        layers = list(hidden_states.unbind(0))
    else:
        layers = checks.as_layer_list(hidden_states, "hidden_states")
        for i, t in enumerate(layers):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                raise ValueError(f"hidden_states[{i}] must be a (B, T, D) tensor, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.shape[:2] != layers[0].shape[:2]:
                raise ValueError(f"hidden_states[{i}] has (B, T)={tuple(t.shape[:2])} but hidden_states[0] has "
                                 f"{tuple(layers[0].shape[:2])}; all layers must cover the same tokens")
            if t.device != layers[0].device:
                raise ValueError(f"hidden_states[{i}] is on {t.device} but hidden_states[0] on {layers[0].device}")
    for i, t in enumerate(layers):
        if not t.is_floating_point():
            raise TypeError(f"hidden_states[{i}] has dtype {t.dtype}; pass floating-point activations")
        if t.numel() == 0:
            raise ValueError(f"hidden_states[{i}] is empty (shape {tuple(t.shape)})")
    return [t.detach() for t in layers]  # measurements, not differentiable: see inputs.as_samples


def _lengths(mask: Optional[torch.Tensor], B: int, T: int, device) -> (torch.Tensor, Optional[torch.Tensor]):
    """Per-sequence token counts, and a gather order that moves valid tokens first (None if they already are)."""
    if mask is None:
        return torch.full((B,), T, dtype=torch.long, device=device), None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (B, T):
        raise ValueError(f"attention_mask must be a (B, T)=({B}, {T}) tensor of 0/1, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    m = mask.to(device=device).bool()
    lengths = m.sum(1)
    prefix = torch.arange(T, device=device)[None, :] < lengths[:, None]
    if torch.equal(prefix, m):
        return lengths, None
    order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)  # valid tokens first, order kept
    return lengths, order


def _groups(lengths: List[int], per_token_bytes: int, budget: int) -> List[List[int]]:
    """Sequence indices grouped by similar length, each group's padded Grams within budget."""
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    groups, cur, real = [], [], 0
    for b in order:
        t = lengths[b]
        padded = (len(cur) + 1) * t * t
        if cur and (padded * per_token_bytes > budget or (len(cur) >= 8 and padded > 1.25 * (real + t * t))):
            groups.append(cur)
            cur, real = [], 0
        cur.append(b)
        real += t * t
    if cur:
        groups.append(cur)
    return groups


def token_cka(hidden_states, attention_mask: Optional[torch.Tensor] = None, unbiased: bool = False, *,
              precision: str = "highest", max_gram_bytes: int = DEFAULT_GRAM_BYTES) -> torch.Tensor:
    """Linear CKA between layers computed separately for every sequence, tokens as samples.

    Args:
        hidden_states: list of L tensors (B, T, D), or one (L, B, T, D) tensor.
        attention_mask: (B, T) with 1 for real tokens (any padding side); None = all real.
        unbiased: unbiased HSIC_1 (each sequence needs >= 4 tokens) or biased HSIC_0 (>= 2).
        precision: the Grams' float32 GEMM mode: ``"highest"`` (IEEE float32, default),
            ``"high"`` (TF32 on CUDA, two bfloat16 terms on a CPU's matrix engine; ``"tf32"``
            is an alias) or ``"medium"`` (bfloat16 inputs, float32 sums), as in
            :func:`mpruner.cka_matrix`. On the CPU, high and medium run the batched path (the
            fused kernel is IEEE float32); float64 states are computed in float64.
        max_gram_bytes: memory bound for the Grams held at once: one group of sequences on
            GPUs; on CPU all threads' Grams together (sequences too long for it are
            processed in blocks of Gram rows).

    Returns:
        (B, L, L) float64; entry [b] is the CKA matrix of sequence b.
    """
    checks.check_precision(precision)
    layers = _layer_list(hidden_states)
    B, T = layers[0].shape[:2]
    device = layers[0].device
    mode = modes.resolve(precision, device)
    if all(t.dtype == torch.float64 for t in layers):
        mode = "highest"  # float64 is exact whatever the mode
    lengths, order = _lengths(attention_mask, B, T, device)
    need = checks.min_samples(unbiased)
    lens = lengths.tolist()
    short = [b for b, n in enumerate(lens) if n < need]
    if short:
        raise ValueError(f"sequences {short[:10]}{'...' if len(short) > 10 else ''} have fewer than {need} tokens; "
                         f"the {'unbiased' if unbiased else 'biased'} estimator needs >= {need} per sequence: drop "
                         "them" + (" or use unbiased=False" if unbiased else ""))
    if device.type == "cpu" and mode == "highest":
        return _normalise(_token_hsic_fused(layers, lengths, order, unbiased, max_gram_bytes))
    return _normalise(_token_hsic_grouped(layers, lengths, order, unbiased, mode, max_gram_bytes))


def _token_hsic_fused(layers, lengths, order, unbiased, max_gram_bytes=DEFAULT_GRAM_BYTES) -> torch.Tensor:
    """CPU: one task per sequence, its Grams built and reduced in cache (csrc/cpu/token_kernel.cpp)."""
    B, T = layers[0].shape[:2]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in layers])
    layers = [t.to(dtype) for t in layers]
    positions = order if order is not None else torch.arange(T).expand(B, T)
    return ops._token_hsic_fused(layers, positions, lengths, unbiased, int(max_gram_bytes))


def _token_hsic_grouped(layers, lengths, order, unbiased, precision, max_gram_bytes) -> torch.Tensor:
    """GPU: sequences of similar length form a group; per group, one batched GEMM per layer
    and one kernel call for all its sequences and layers. Only one layer's tokens of one
    group are copied at a time (never a stack of all layers), and the group's Grams stay
    within max_gram_bytes; layers may have different widths."""
    device = layers[0].device
    B, L = layers[0].shape[0], len(layers)
    lens = lengths.tolist()
    work = torch.float64 if any(t.dtype == torch.float64 for t in layers) else torch.float32
    out = torch.empty(B, L, L, dtype=torch.float64, device=device)
    for idx in _groups(lens, L * (8 if work == torch.float64 else 4), max_gram_bytes):
        sel = torch.tensor(idx, device=device)
        tc = max(lens[b] for b in idx)
        n = lengths[sel]
        valid = (torch.arange(tc, device=device)[None, :] < n[:, None])[:, :, None]
        rows = sel[:, None]
        cols = torch.arange(tc, device=device)[None, :] if order is None else order[sel, :tc]
        grams = torch.empty(L, len(idx), tc, tc, dtype=work, device=device)
        for l, h in enumerate(layers):
            x = h[rows, cols].to(work)                         # (G, tc, D): valid tokens first
            # Center each sequence's features over its real tokens (precision of float32
            # Grams). torch.where, not a product: padding may hold anything, NaN included.
            x = torch.where(valid, x, 0)
            mean = x.sum(1, keepdim=True) / n.to(work)[:, None, None]
            x = torch.where(valid, x - mean, 0)
            _gram_bmm(x, precision, grams[l])
        out[sel] = ops.token_hsic(grams, n, unbiased)
    return out


def _gram_bmm(x: torch.Tensor, precision: str, out: torch.Tensor) -> None:
    """out = x x^T (batched) in a resolved precision mode, as the engine's Grams do it:
    float32 (TF32 for CUDA "high"); CUDA "medium": bfloat16 inputs, float32 output; CPU
    "medium": bfloat16-rounded values; CPU "high": x = hi + lo (both bfloat16) and
    hi hi^T + hi lo^T + lo hi^T in one GEMM. The CPU's values are exact bfloat16, so its
    matrix engine (torch's mkldnn bf16 mode) adds no rounding of its own."""
    with checks.gemm_precision(precision, x.device):
        if precision == "highest" or x.dtype == torch.float64 or (x.is_cuda and precision == "high"):
            torch.bmm(x, x.transpose(1, 2), out=out)
        elif x.is_cuda:
            xb = x.to(torch.bfloat16)
            torch.bmm(xb, xb.transpose(1, 2), out_dtype=torch.float32, out=out)
        elif precision == "medium":
            xb = x.to(torch.bfloat16).float()
            torch.bmm(xb, xb.transpose(1, 2), out=out)
        else:
            hi = x.to(torch.bfloat16).float()
            lo = (x - hi).to(torch.bfloat16).float()
            torch.bmm(torch.cat([hi, hi, lo], -1), torch.cat([hi, lo, hi], -1).transpose(1, 2), out=out)


def _normalise(hs: torch.Tensor) -> torch.Tensor:
    d = torch.diagonal(hs, dim1=1, dim2=2)                     # (B, L)
    if not torch.isfinite(d).all():
        bad = sorted({int(i) for i in (~torch.isfinite(d)).nonzero()[:, 1].tolist()})
        raise NonFiniteError(f"NaN or Inf in the hidden states of layers {bad}; fix the model/inputs", bad)
    degenerate = d <= 0
    safe = torch.where(degenerate, torch.ones_like(d), d)
    c = hs / torch.sqrt(safe[:, :, None] * safe[:, None, :])
    c = torch.where(degenerate[:, :, None] | degenerate[:, None, :], torch.full_like(c, float("nan")), c)
    if degenerate.any():
        layers = sorted({int(i) for i in degenerate.nonzero()[:, 1].tolist()})
        warnings.warn(f"layers {layers} are constant over the tokens of some sequences; those CKA entries are NaN",
                      RuntimeWarning, stacklevel=user_stacklevel())
    return c

"""Cosine similarity and angular distance between layers, token by token (C++/CUDA kernel).

The metrics LLM depth-pruning uses beside CKA: ShortGPT's Block Influence (1 - cosine
between a block's input and output) and the angular distance arccos(cos)/pi of Gromov
et al. One kernel call per batch gives every pair of the K hidden states at once,
summed over the selected tokens in float64 (``torch.ops.mpruner._cosine_sums``).

Zero-vector rule: two zero vectors count as identical (cosine 1, angular distance 0),
a zero and a non-zero vector as orthogonal (cosine 0, angular distance 1/2), so the
result is never NaN; cosines are clamped to [-1, 1] before arccos.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch

from . import checks
from .ops import ops

SIMILARITY_VIEWS = ("tokens", "last_token")


@torch.library.register_fake("mpruner::_cosine_sums")
def _cosine_sums_fake(hidden, rows):
    K = len(hidden)
    return (rows.new_empty((K, K), dtype=torch.float64), rows.new_empty((K, K), dtype=torch.float64))


def token_rows(mask: Optional[torch.Tensor], B: int, T: int, view: str = "tokens",
               device=None) -> torch.Tensor:
    """Indices into the flattened (B, T) grid of the tokens a view compares.

    ``"tokens"``: every real token (``mask`` 1; all when ``mask`` is None).
    ``"last_token"``: each sequence's last real token (any padding side); sequences
    without a real token are left out.
    """
    checks.check_choice(view, SIMILARITY_VIEWS, "view")
    if mask is None:
        if view == "tokens":
            return torch.arange(B * T, device=device)
        return torch.arange(B, device=device) * T + (T - 1)
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"attention_mask must be (B, T)=({B}, {T}), got {tuple(mask.shape)}")
    m = mask.to(device=device).bool()
    if view == "tokens":
        return m.flatten().nonzero().flatten()
    has = m.any(1)
    last = T - 1 - m.flip(1).to(torch.int8).argmax(1)
    return (torch.arange(B, device=m.device) * T + last)[has]


def _work_layers(hidden: List[torch.Tensor]) -> List[torch.Tensor]:
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in hidden])
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32  # half types are computed in float32 (dots in float64)
    return [t.detach().to(dtype) for t in hidden]


def cosine_sums(hidden: List[torch.Tensor], rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sums over the tokens ``rows`` of cos and of arccos(cos)/pi for every pair of K (B, T, D) tensors.

    Returns two (K, K) float64 tensors; divide by ``len(rows)`` for the means.
    """
    layers = checks.as_layer_list(hidden, "hidden")
    for i, t in enumerate(layers):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or not t.is_floating_point():
            raise ValueError(f"hidden[{i}] must be a floating-point (B, T, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.shape != layers[0].shape:
            raise ValueError(f"hidden[{i}] has shape {tuple(t.shape)} but hidden[0] has {tuple(layers[0].shape)}; "
                             "cosine compares vectors of one width on the same tokens (use CKA for layers of "
                             "different widths)")
    return ops._cosine_sums(_work_layers(layers), rows.to(device=layers[0].device, dtype=torch.long))


def token_cosine(hidden_states, attention_mask: Optional[torch.Tensor] = None,
                 view: str = "tokens") -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean cosine similarity and mean angular distance between every pair of layers.

    Args:
        hidden_states: L tensors (B, T, D) of one shape (or an (L, B, T, D) tensor).
        attention_mask: (B, T), 1 for real tokens (padding on either side); None = all real.
        view: ``"tokens"`` (every real token) or ``"last_token"`` (each sequence's last real token).

    Returns:
        ``(cosine, angular)``: (L, L) float64 means over the selected tokens.
    """
    if isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 4:
        hidden_states = list(hidden_states.unbind(0))
    layers = checks.as_layer_list(hidden_states, "hidden_states")
    B, T = layers[0].shape[:2]
    rows = token_rows(attention_mask, B, T, view, layers[0].device)
    if rows.numel() == 0:
        raise ValueError("attention_mask marks no real token; there is nothing to compare")
    cos, ang = cosine_sums(layers, rows)
    return cos / rows.numel(), ang / rows.numel()

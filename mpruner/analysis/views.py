"""Views: how a block's output becomes one row of features per sample.

A view gets the block's output tensor and the batch context (its attention masks)
and returns ``(n, ...)`` features for the minibatch CKA, or, for ``"tokens"``, the
``(B, T, D)`` states with the mask that marks real tokens.

- ``flatten``: every output value is a feature (padding tokens zeroed when the mask is known).
- ``mean``: mean over tokens of (B, T, D), over real tokens when the batch has an
  ``attention_mask``; spatial mean of conv maps (N, C, H, W); (N, D) is kept.
- ``cls``: token 0 of (B, T, D). ``last_token``: the last real token of each sequence.
- ``tokens``: per-sequence CKA with tokens as samples (``mpruner.token_cka``).

A (B, T) mask is taken from the batch dict's ``attention_mask`` (or
``decoder_attention_mask``) when its shape matches the output's first two dimensions;
layers of a decoder stack (``decoder`` in their name) try ``decoder_attention_mask`` first.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

import torch

VIEWS = ("flatten", "mean", "cls", "last_token", "tokens")
NORMALIZATIONS = ("rms", None)
MASK_KEYS = ("attention_mask", "decoder_attention_mask")
TOKEN_VIEWS = ("cls", "last_token", "tokens")


@dataclass
class BatchContext:
    """What a view may know about the current batch besides the layer output."""

    index: int
    masks: Tuple[Tuple[str, torch.Tensor], ...] = ()
    token_ids: bool = False          # the batch holds integer tensors: padded text, possibly
    keys: str = ""                   # for error messages
    _cache: Dict = field(default_factory=dict)

    def mask_for(self, x: torch.Tensor, name: str = "") -> Optional[torch.Tensor]:
        """The batch's (B, T) mask that fits a (B, T, ...) output, as bool on x's device.

        A layer of a decoder stack (``decoder`` in its name) prefers ``decoder_attention_mask``.
        """
        decoder = "decoder" in name.split(".")
        key = (tuple(x.shape[:2]), x.device, decoder)
        if key not in self._cache:
            mask = None
            for _, m in sorted(self.masks, key=lambda item: decoder != (item[0] == "decoder_attention_mask")):
                if m.dim() == 2 and tuple(m.shape) == tuple(x.shape[:2]):
                    mask = m.to(device=x.device, non_blocking=True).bool()
                    break
            self._cache[key] = mask
        return self._cache[key]


def hidden_tensor(output, name: str) -> torch.Tensor:
    """The hidden-states tensor of a block's output (a tensor, tuple/list, or ModelOutput/dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        value = output.get("last_hidden_state")
        if isinstance(value, torch.Tensor):
            return value
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"layer {name!r} returned a {type(output).__name__} without a tensor; analyze needs a block "
                    "whose output is (or starts with) its hidden states: hook another module (layers=[...])")


def _shape_error(view: str, x: torch.Tensor, name: str) -> ValueError:
    kind = {1: "one value per sample", 2: "(batch, features) with no token axis"}.get(x.dim(), "a conv feature map")
    return ValueError(f"view={view!r} needs token outputs (batch, tokens, features), but layer {name!r} gives a "
                      f"{tuple(x.shape)} tensor ({kind}); use view='mean' or view='flatten'")


def apply_view(view: str, x: torch.Tensor, ctx: BatchContext, name: str,
               normalize: Optional[str] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Apply ``view`` to the output ``x`` of layer ``name``; see the module docstring.

    ``normalize="rms"`` first scales every token vector of a (batch, tokens, features) output to
    unit root-mean-square, as the next block's RMSNorm/LayerNorm sees it: in a decoder LM's
    residual stream a few massive dimensions (thousands of times the median) would otherwise
    dominate every linear kernel and saturate CKA near 1.
    """
    if x.dim() == 0:
        raise ValueError(f"layer {name!r} returned a scalar; analyze needs one output row per sample")
    if not x.is_floating_point():
        raise TypeError(f"layer {name!r} returned {x.dtype} values; CKA needs floating-point activations")
    if normalize == "rms" and x.dim() == 3:
        x = rms_normalized(x)
    if x.dim() == 1:
        x = x[:, None]
    if view in TOKEN_VIEWS and x.dim() != 3:
        raise _shape_error(view, x, name)
    if view == "flatten":
        mask = ctx.mask_for(x, name) if x.dim() == 3 else None
        if mask is not None:  # padding positions are not features of the sequence
            x = torch.where(mask[:, :, None], x, 0)
        return x.reshape(x.shape[0], -1)
    if view == "mean":
        return _mean(x, ctx.mask_for(x, name) if x.dim() == 3 else None)
    if view == "cls":
        mask = ctx.mask_for(x, name)
        if mask is not None and not _first_is_real(ctx, mask):
            raise ValueError(f"view='cls' takes token 0, but batch {ctx.index} is left-padded (token 0 is padding "
                             f"in some sequences) at layer {name!r}: pad on the right or use view='last_token'")
        return x[:, 0]
    if view == "last_token":
        mask = ctx.mask_for(x, name)
        if mask is None:
            return x[:, -1]
        last = mask.shape[1] - 1 - mask.flip(1).to(torch.int8).argmax(1)
        return x[torch.arange(x.shape[0], device=x.device), last]
    if view == "tokens":
        mask = ctx.mask_for(x, name)
        if mask is None and ctx.token_ids:
            raise ValueError(f"view='tokens' needs the attention_mask of each batch to leave out padding, but batch "
                             f"{ctx.index} ({ctx.keys}) has no (B, T)={tuple(x.shape[:2])} mask for layer {name!r}: "
                             "pass dict batches with 'attention_mask' (tokenizer(..., return_attention_mask=True)), "
                             "or use view='mean'")
        return x, mask
    raise ValueError(f"view must be one of {', '.join(map(repr, VIEWS))}; got {view!r}")


def rms_normalized(x: torch.Tensor) -> torch.Tensor:
    """Each vector along the last axis scaled to unit root-mean-square (zero vectors stay zero)."""
    ms = x.float().pow(2).mean(dim=-1, keepdim=True)
    return (x.float() * torch.rsqrt(ms.clamp_min(torch.finfo(torch.float32).tiny))).to(x.dtype)


def _sum_dtype(x: torch.Tensor):
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None


def _mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    if x.dim() == 2:
        return x
    if x.dim() > 3:  # conv maps (N, C, *spatial): spatial mean
        return x.mean(dim=tuple(range(2, x.dim())), dtype=_sum_dtype(x))
    if mask is None:
        return x.mean(dim=1, dtype=_sum_dtype(x))
    # torch.where, not a product with the mask: padding positions may hold NaN.
    total = torch.where(mask[:, :, None], x, 0).sum(dim=1, dtype=_sum_dtype(x))
    return total / mask.sum(dim=1, keepdim=True).clamp_min(1).to(total.dtype)


def _first_is_real(ctx: BatchContext, mask: torch.Tensor) -> bool:
    key = ("first_real", id(mask))
    if key not in ctx._cache:
        ctx._cache[key] = bool(mask[:, 0].all())
    return ctx._cache[key]

"""Per-block removal signals from one streaming pass: each block's input against its output.

For every block of the block list and every real token (padding excluded):

- ``cka``: 1 - linear CKA between the block's input and output, per sequence (tokens as
  samples, unbiased HSIC), averaged over sequences; each token vector is first scaled to unit
  RMS (``normalize="rms"``), so the residual stream's few massive dimensions do not saturate it;
- ``influence``: Block Influence, 1 - cos(input, output) (ShortGPT, Men et al. 2024);
- ``angular``: arccos(cos(input, output)) / pi (Gromov et al. 2024);
- ``update``: the relative update ||output - input|| / ||input||.

Each is a score per block, lower = the block changes its input less = safer to remove. Only
(L,) float64 sums outlive a batch.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

from ..analysis.batches import batch_context, call_model, to_device
from ..analysis.capture import LayerCapture
from ..analysis.input_capture import InputCapture
from ..analysis.layers import LayerSelection
from ..analysis.placement import execution_device
from ..analysis.views import rms_normalized
from ..engine import token_cka

SIMILARITY_SIGNALS = ("cka", "influence", "angular", "update")


def _states(x, ctx, name):
    return x, ctx.mask_for(x, name)


def _real_tokens(x: torch.Tensor, mask: Optional[torch.Tensor], skip_first: bool) -> torch.Tensor:
    """(B, T) bool: the tokens a signal reads; without the first real token with ``skip_first``."""
    real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    if skip_first:
        first = real.to(torch.int8).argmax(dim=1)  # position of each sequence's first real token
        real = real.clone()
        real[torch.arange(real.shape[0], device=real.device), first] = False
    return real


class _Sums:
    def __init__(self, blocks: int):
        zeros = lambda: torch.zeros(blocks, dtype=torch.float64)  # noqa: E731
        self.cka, self.sequences = zeros(), zeros()
        self.influence, self.angular, self.update = zeros(), zeros(), zeros()
        self.tokens = 0

    def add(self, i: int, x: torch.Tensor, y: torch.Tensor, real: torch.Tensor, normalize: Optional[str]) -> None:
        # float64: near-identical input and output put cos within float32 rounding of 1, where
        # arccos is steep (an identity block would read 5e-5 instead of 0).
        xd, yd = x[real].double(), y[real].double()
        cos = torch.nn.functional.cosine_similarity(xd, yd, dim=-1).clamp(-1, 1)
        self.influence[i] += (1 - cos).sum().cpu()
        self.angular[i] += (torch.arccos(cos) / math.pi).sum().cpu()
        update = (yd - xd).norm(dim=-1) / xd.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
        self.update[i] += update.sum().cpu()
        xf, yf = x.float(), y.float()
        if normalize == "rms":
            xf, yf = rms_normalized(xf), rms_normalized(yf)
        lengths = real.sum(dim=1)
        keep = lengths >= 4  # the unbiased HSIC needs 4 tokens
        if bool(keep.any()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a constant sequence: left out below
                c = token_cka([xf[keep], yf[keep]], real[keep], unbiased=True)[:, 0, 1]
            finite = torch.isfinite(c)
            self.cka[i] += c[finite].double().sum().cpu()
            self.sequences[i] += int(finite.sum())

    def scores(self) -> Dict[str, torch.Tensor]:
        n = max(self.tokens, 1)
        cka = self.cka / self.sequences.clamp_min(1)
        cka = torch.where(self.sequences > 0, 1 - cka, torch.full_like(cka, float("nan")))
        return {"cka": cka, "influence": self.influence / n, "angular": self.angular / n, "update": self.update / n}


def block_signals(model: nn.Module, batches: Iterable, selection: LayerSelection, normalize: Optional[str] = "rms",
                  skip_first: bool = False, progress: bool = True) -> Dict[str, torch.Tensor]:
    """The four similarity signals of every block in ``selection``, from one pass over ``batches``.

    ``normalize="rms"`` applies to the CKA signal only (the other three are per-token ratios);
    ``skip_first`` leaves out each sequence's first real token (the attention-sink position).
    The model runs in eval mode under ``no_grad``; its modes are restored and the hooks removed.
    """
    device = execution_device(model)
    sums = _Sums(len(selection))
    modes = [(m, m.training) for m in model.modules()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="mpruner block signals", unit="batch", total=len(batches) if hasattr(batches, "__len__")
                   else None, leave=False)
    try:
        with torch.no_grad(), LayerCapture(selection, _states) as outputs, InputCapture(selection) as inputs:
            model.eval()
            for index, batch in enumerate(batches):
                batch = to_device(batch, device, index)
                ctx = batch_context(batch, index)
                outputs.start(ctx)
                inputs.start(ctx)
                call_model(model, batch, None, index)
                outs, ins = outputs.collect(), inputs.collect()
                real = _real_tokens(outs[0][0], outs[0][1], skip_first)
                sums.tokens += int(real.sum())
                for i, ((x, _), (y, _)) in enumerate(zip(ins, outs)):
                    sums.add(i, x, y, real, normalize)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for module, training in modes:
            module.training = training
    if sums.tokens == 0:
        raise ValueError("batches hold no real token (every attention_mask is zero, or no batch at all)")
    return sums.scores()

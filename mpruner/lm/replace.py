"""A training-free linear stand-in for removed blocks, folded into the model (after ReplaceMe, 2025).

For a contiguous run of removed blocks i..j, block i-1 stays and ends with the residual add
``X = R + M``, where ``M`` is its MLP's output (the output of one linear projection: LLaMA's
``mlp.down_proj``, GPT-2's ``mlp.c_proj``) and ``Y`` is what block j outputs. A d x d map T is
fitted by least squares over the calibration tokens so that ``R + M T`` stands in for ``Y``:

    T = argmin || M T - (Y - X + M) ||^2 (+ ridge ||T||^2)

from the float64 normal equations ``(M^T M + ridge I) T = M^T (Y - X + M)``, streamed over the
batches as the engine streams its sums (padding excluded). T is then folded into the
projection (``W <- T^T W`` for an ``nn.Linear``; ``W <- W T, b <- b T`` for GPT-2's Conv1D), and
the run is removed: the model stays a plain model of its family, so ``save_pretrained`` and a
plain ``from_pretrained`` give the same logits. Runs are replaced one after another, each
fitted on the model with the earlier runs already replaced.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable, List, Sequence

import torch
import torch.nn as nn

from ..adapters import family_traits, find_blocks
from ..analysis.batches import batch_context, call_model, to_device
from ..analysis.placement import execution_device
from ..stacklevel import user_stacklevel
from ..surgery import remove_layers
from .select import calibration_batches


# Fewer calibration tokens per dimension of the residual stream and the fitted map overfits them: on
# SmolLM2-135M (d = 576), 1,024 tokens made two removed blocks cost 1.49x the perplexity instead of
# 1.23x removed plainly, 8,192 tokens 1.13x.
MIN_TOKENS_PER_DIM = 8


def runs(blocks: Sequence[int]) -> List[List[int]]:
    """Sorted indices as maximal runs of consecutive blocks: [2, 3, 7] -> [[2, 3], [7]]."""
    out: List[List[int]] = []
    for i in sorted(set(blocks)):
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    return next(v for v in value if isinstance(v, torch.Tensor))


class _NormalEquations:
    """Float64 sums of M^T M and M^T (Y - X + M) over real tokens."""

    def __init__(self, width: int):
        self.mm = torch.zeros(width, width, dtype=torch.float64)
        self.mt = torch.zeros(width, width, dtype=torch.float64)
        self.tokens = 0

    def add(self, m, x, y, mask) -> None:
        rows = torch.ones(m.shape[:2], dtype=torch.bool, device=m.device) if mask is None else mask.bool()
        m, target = m[rows].double(), (y[rows] - x[rows] + m[rows]).double()
        self.mm += (m.T @ m).cpu()
        self.mt += (m.T @ target).cpu()
        self.tokens += m.shape[0]

    def solve(self, ridge: float) -> torch.Tensor:
        width = self.mm.shape[0]
        if self.tokens < MIN_TOKENS_PER_DIM * width:
            warnings.warn(f"linear_replacement fits a {width}x{width} map from {self.tokens} calibration tokens, "
                          f"fewer than {MIN_TOKENS_PER_DIM} per dimension: it may fit their noise and do worse than "
                          f"plain removal; pass more calibration windows (>= {MIN_TOKENS_PER_DIM * width} tokens)",
                          RuntimeWarning, stacklevel=user_stacklevel())
        a = self.mm + ridge * torch.eye(self.mm.shape[0], dtype=torch.float64)
        try:
            return torch.linalg.solve(a, self.mt)
        except RuntimeError:  # singular (e.g. fewer tokens than dimensions): the minimum-norm answer
            return torch.linalg.lstsq(a, self.mt, driver="gelsd").solution


def _fit(model: nn.Module, batches: List, blocks, prev: int, first: int, last: int, projection: str,
         ridge: float) -> torch.Tensor:
    """T for the run first..last, from one pass over ``batches`` with three hooks."""
    proj = blocks[prev].get_submodule(projection)
    width = proj.out_features if isinstance(proj, nn.Linear) else proj.weight.shape[1]
    sums = _NormalEquations(width)
    seen = {}
    handles = [proj.register_forward_hook(lambda m, a, out: seen.__setitem__("m", out)),
               blocks[first].register_forward_pre_hook(
                   lambda m, a, k: seen.__setitem__("x", k.get("hidden_states") if k.get("hidden_states") is not None
                                                    else _first_tensor(a)), with_kwargs=True),
               blocks[last].register_forward_hook(lambda m, a, out: seen.__setitem__("y", _first_tensor(out)))]
    device = execution_device(model)
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                batch = to_device(batch, device, index)
                ctx = batch_context(batch, index)
                seen.clear()
                call_model(model, batch, None, index)
                x = seen["x"]
                sums.add(seen["m"], x, seen["y"], ctx.mask_for(x, ""))
    finally:
        for handle in handles:
            handle.remove()
    return sums.solve(ridge)


def _fold(projection: nn.Module, t: torch.Tensor) -> None:
    """The projection's output y becomes y T."""
    with torch.no_grad():
        w = projection.weight
        if isinstance(projection, nn.Linear):  # y = x W^T + b  ->  W' = T^T W, b' = b T
            projection.weight.copy_((t.T @ w.double()).to(w.dtype))
        else:  # GPT-2's Conv1D: y = x W + b  ->  W' = W T
            projection.weight.copy_((w.double() @ t).to(w.dtype))
        if getattr(projection, "bias", None) is not None:
            projection.bias.copy_((projection.bias.double() @ t).to(projection.bias.dtype))


def linear_replacement(model: nn.Module, blocks: Iterable[int], batches, ridge: float = 0.0) -> nn.Module:
    """A copy of ``model`` with ``blocks`` removed and each contiguous run replaced by a fitted
    linear map folded into the previous block's MLP output projection (see the module docstring).

    Args:
        model: a decoder LM whose family declares a foldable projection (LLaMA, Qwen2, Mistral,
            Qwen3, Phi-3, GPT-2); never modified.
        blocks: indices into the model's block list; a run may not start at block 0 (no block
            before it to fold into).
        batches: calibration batches (dicts with ``input_ids`` and ``attention_mask``); at least
            8 tokens per dimension of the residual stream (a warning says when there are fewer).
        ridge: Tikhonov term added to M^T M (0: plain least squares; a singular system falls
            back to the minimum-norm solution).

    Returns:
        The pruned model (``save_pretrained`` / ``from_pretrained`` reload it as it is).
    """
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or ridge < 0:
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    traits = family_traits(model)
    if traits is None or traits.residual_projection is None:
        family = f"the {traits.model_type!r} family" if traits is not None else type(model).__name__
        raise ValueError(f"linear_replacement folds its map into the projection that writes each block's MLP output "
                         f"into the residual stream; {family} declares none (supported: LLaMA, Qwen2, Mistral, "
                         "Qwen3, Phi-3, GPT-2); remove the blocks without replacement instead")
    block_list = find_blocks(model)[0]
    chosen = sorted(set(int(i) for i in blocks))
    if not chosen:
        raise ValueError("blocks is empty; name the blocks to remove")
    bad = [i for i in chosen if not 0 <= i < len(block_list)]
    if bad:
        raise ValueError(f"blocks {bad} are not in 0..{len(block_list) - 1}")
    if chosen[0] == 0:
        raise ValueError("blocks: a replaced run cannot start at block 0, which has no block before it to fold the "
                         "map into; keep block 0 (or remove it without replacement)")
    if len(chosen) >= len(block_list):
        raise ValueError(f"blocks would remove all {len(block_list)} blocks")
    batches = calibration_batches(batches, "linear_replacement")
    work = copy.deepcopy(model)
    was = work.training
    work.eval()
    offset = 0
    for run in runs(chosen):
        first, last = run[0] - offset, run[-1] - offset  # indices in the model with earlier runs removed
        layers = [b for _, b in find_blocks(work)[0]]
        t = _fit(work, batches, layers, first - 1, first, last, traits.residual_projection, float(ridge))
        _fold(layers[first - 1].get_submodule(traits.residual_projection), t)
        work = remove_layers(work, {block_list.name: list(range(first, last + 1))}, inplace=True)
        offset += len(run)
    work.train(was)
    return work

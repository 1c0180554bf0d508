"""Wanda (Sun, Liu, Bair & Kolter 2024, "A Simple and Effective Pruning Approach for LLMs").

Score of weight W[i, j] = |W[i, j]| * ||X_j||_2, X_j the j-th input feature of the layer over
every real calibration token. In each output row the lowest scores are zeroed: a fraction
``sparsity`` of the row (unstructured), or M-N of every M consecutive inputs (N:M, e.g. 2:4).
"""
from __future__ import annotations

import contextlib
import copy
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..analysis.batches import call_model, check_data, model_device, to_device
from .layers import as_rows, effective_weight, from_rows, in_features, target_layers
from .masks import attach_masks, refresh_masked_weights
from .stats import InputNorms

Forward = Callable[[nn.Module, object], object]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layers of interest have run."""


def parse_pattern(pattern: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"2:4"`` -> (2, 4): keep N of every M consecutive input weights; None -> None."""
    if pattern is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"pattern must be None (unstructured) or 'N:M' such as '2:4' or '4:8', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern!r}: N:M keeps N of every M weights and needs 0 < N < M (e.g. '2:4')")
    return n, m


def _check_sparsity(sparsity, nm) -> float:
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise ValueError(f"sparsity={sparsity!r} conflicts with pattern '{nm[0]}:{nm[1]}', which zeroes "
                             f"{implied:g} of the weights; leave sparsity=None with a pattern")
        return implied
    if sparsity is None:
        return 0.5
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    return float(sparsity)


def row_mask(weight_rows: torch.Tensor, norms: torch.Tensor, sparsity: float,
             nm: Optional[Tuple[int, int]]) -> torch.Tensor:
    """0/1 mask (out, in) zeroing the lowest |W| * ||X|| scores of each row (ties: lower index first)."""
    score = weight_rows.detach().abs().double() * norms.to(weight_rows.device, torch.float64)[None, :]
    rows, cols = score.shape
    if nm is None:
        k = int(round(sparsity * cols))
        mask = torch.ones_like(score)
        if k:
            mask.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], 0.0)
        return mask
    n, m = nm
    grouped = score.reshape(rows, cols // m, m)
    mask = torch.ones_like(grouped)
    mask.scatter_(2, torch.sort(grouped, dim=2, stable=True).indices[..., : m - n], 0.0)
    return mask.reshape(rows, cols)


def wanda_masks(model: nn.Module, norms: Dict[str, torch.Tensor], sparsity: Optional[float] = None,
                pattern: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Masks (module name -> 0/1 tensor shaped like its weight) from precomputed input norms.

    ``sparsity`` and ``pattern`` as in :func:`wanda` (default 0.5, or the fraction a pattern implies).
    """
    nm = parse_pattern(pattern)
    sparsity = _check_sparsity(sparsity, nm)
    modules = dict(model.named_modules())
    out = {}
    for name, norm in norms.items():
        module = modules[name]
        w = effective_weight(module)
        out[name] = from_rows(module, row_mask(as_rows(module, w), norm, sparsity, nm)).to(w.dtype)
    return out


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module):
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def _stop_after(module: Optional[nn.Module]):
    if module is None:
        yield
        return

    def hook(*_):
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def collect_norms(model: nn.Module, data: Iterable, names: Sequence[str], forward: Optional[Forward] = None,
                  stop_at: Optional[nn.Module] = None, max_batches: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """‖X_j‖₂ (float64) of the named layers over ``data``, streamed; ``stop_at`` ends each
    forward pass after that module ran (the later layers are not needed)."""
    device = model_device(model)
    with _eval_no_grad(model), InputNorms(model, list(names)) as stats, _stop_after(stop_at):
        for index, batch in enumerate(data):
            if max_batches is not None and index >= max_batches:
                break
            batch = to_device(batch, device, index)
            stats.start(batch, index)
            try:
                call_model(model, batch, forward, index)
            except _Stop:
                pass
        return stats.norms()


def _validate(model, calib_data, layers, nm, forward, sequential) -> List[Tuple[str, List[str]]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_data(calib_data)
    if sequential and iter(calib_data) is calib_data:
        raise TypeError("calib_data is a one-shot iterator, but sequential=True passes over it once per block; "
                        "pass a list or a DataLoader (or sequential=False)")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be a callable forward(model, batch), got {type(forward).__name__}")
    groups = target_layers(model, layers)
    if nm is not None:
        modules = dict(model.named_modules())
        bad = [(n, in_features(modules[n])) for _, names in groups for n in names
               if in_features(modules[n]) % nm[1]]
        if bad:
            raise ValueError(f"pattern '{nm[0]}:{nm[1]}' needs in_features divisible by {nm[1]}; not so for "
                             f"{bad[:4]}{' ...' if len(bad) > 4 else ''}; choose another pattern or leave these "
                             "layers out with layers=[...]")
    return groups


def wanda(model: nn.Module, calib_data: Iterable, sparsity: Optional[float] = None, pattern: Optional[str] = None,
          layers: Union[str, Sequence[str]] = "auto", sequential: bool = True, forward: Optional[Forward] = None,
          inplace: bool = False, progress: bool = True, *, max_batches: Optional[int] = None,
          norms: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
    """Wanda-sparsify ``model``: zero the weights with the lowest ``|W|·‖X‖`` in each output row.

    Args:
        model: any ``nn.Module``; untouched unless ``inplace=True`` (even then only on success:
            every error leaves it as it was).
        calib_data: calibration batches, called as ``mpruner.analyze`` calls them (dict ->
            ``model(**batch)``, tuple -> ``model(batch[0])``, tensor -> ``model(batch)``); padding
            is excluded through the batch's ``attention_mask``.
        sparsity: fraction of each row's weights zeroed, in [0, 1) (default 0.5); with a
            ``pattern`` it is implied (2:4 -> 0.5) and a different value is an error.
        pattern: None (unstructured) or ``"N:M"``: keep N of every M consecutive input weights.
        layers: ``"auto"`` (every Linear / GPT-2 Conv1D / 1x1 Conv2d inside ``find_blocks``'
            blocks) or a list of module names.
        sequential: block by block, each block's statistics collected with the earlier blocks
            already sparse (as the reference code); False: one pass on the dense model.
        forward: ``forward(model, batch)`` replaces the default call.
        inplace: sparsify ``model`` itself instead of a deep copy.
        max_batches: use only the first batches of ``calib_data``.
        norms: precomputed ‖X_j‖ per layer name (one-pass mode only), e.g. from an
            :class:`InputNorms` that ran beside ``analyze``.

    Returns:
        The sparsified model; its zeros are held by ``torch.nn.utils.prune`` masks (fine-tuning
        keeps them), fold them with ``mpruner.sparsity.make_permanent`` before saving.
    """
    nm = parse_pattern(pattern)
    sparsity = _check_sparsity(sparsity, nm)
    groups = _validate(model, calib_data, layers, nm, forward, sequential)
    if norms is not None and sequential:
        raise ValueError("norms= are statistics of one model state; they need sequential=False")
    refresh_masked_weights(model)  # an already-masked, trained model deep-copies only with plain weights
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    masks: Dict[str, torch.Tensor] = {}
    if sequential:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(groups), desc="wanda", unit="block")
        try:
            for index, (group, names) in enumerate(groups):
                last = index == len(groups) - 1
                stats = collect_norms(work, calib_data, names, forward, None if last else modules[group],
                                      max_batches)
                new = wanda_masks(work, stats, sparsity, pattern)
                attach_masks(work, new)
                masks.update(new)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    else:
        names = [n for _, group_names in groups for n in group_names]
        if norms is None:
            norms = collect_norms(work, calib_data, names, forward, None, max_batches)
        missing = [n for n in names if n not in norms]
        if missing:
            raise ValueError(f"norms= lacks layers {missing[:4]}; collect them for every layer Wanda prunes")
        masks = wanda_masks(work, {n: norms[n] for n in names}, sparsity, pattern)
        attach_masks(work, masks)
    if not inplace:
        return work
    attach_masks(model, masks)  # the same masks, applied to the caller's model only now that all succeeded
    return model

"""Which blocks of a decoder LM to remove: one score per block, or the ``n`` blocks to go.

Methods (every score: lower = safer to remove):

- from one streaming pass over the calibration batches (:mod:`.signals`): ``"cka"``
  (1 - RMS-normalized CKA of the block's input and output), ``"influence"`` (Block
  Influence), ``"angular"``, ``"update"`` (relative update norm);
- by measured calibration loss (:mod:`.loss_signals`): ``"loo"`` (leave-one-out loss
  increase) and ``"greedy"`` (SLEB: one block per round, the loss re-measured each round);
- ``"auto"``: the method that did best on SmolLM2-135M in ``benchmarks/bench_lm_select.py``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..adapters import family_traits, find_blocks
from ..analysis.layers import resolve_layers
from ..evaluation.loss import check_token_batch
from ..surgery import removable_layers
from .loss_signals import greedy, leave_one_out
from .signals import SIMILARITY_SIGNALS, block_signals

LOSS_METHODS = ("loo", "greedy")
METHODS = SIMILARITY_SIGNALS + LOSS_METHODS
AUTO = "greedy"  # best unhealed perplexity at n = 4 and n = 8 on SmolLM2 (docs: language models)
Protect = Union[str, Sequence[int], None]


def _check_method(method: str, allow_auto: bool) -> str:
    valid = METHODS + (("auto",) if allow_auto else ())
    if method not in valid:
        raise ValueError(f"method must be one of {', '.join(map(repr, valid))}; got {method!r}")
    return AUTO if method == "auto" else method


def calibration_batches(batches, method: str) -> list:
    if isinstance(batches, (torch.Tensor, dict, str)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"batches must be a list of dict batches with 'input_ids' (e.g. mpruner.data.lm_batches), "
                        f"got {type(batches).__name__}")
    batches = list(batches)  # read several times by the loss-driven methods
    if not batches:
        raise ValueError("batches is empty; pass at least one calibration batch")
    for index, batch in enumerate(batches):
        check_token_batch(batch, index)
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


_CAUSAL_CLASSES = ("ForCausalLM", "LMHeadModel")


def check_causal_lm(model, what: str) -> None:
    """Refuses a model (or a Hugging Face config, checked before any weights load) that is not a
    decoder-only language model, naming what was detected.

    A family the registry knows must be declared a causal LM by its adapter; another Hugging
    Face model must be a ``...ForCausalLM``/``...LMHeadModel`` (a config: list one in
    ``architectures``); a plain module passes (the loss computation checks that it gives
    (batch, tokens, vocab) logits).
    """
    is_config = not isinstance(model, nn.Module)
    config = model if is_config else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    traits = family_traits(model_type) if model_type else None
    name = "a config" if is_config else type(model).__name__
    if traits is not None:
        if traits.causal_lm:
            return
        detected = f"{name} of model_type {traits.model_type!r}, which is not a decoder-only language model"
    elif config is None:
        return
    elif (not is_config and type(model).__name__.endswith(_CAUSAL_CLASSES)) or (
            is_config and any(a.endswith(_CAUSAL_CLASSES) for a in (getattr(config, "architectures", None) or []))):
        return
    else:
        detected = f"{name} of model_type {model_type!r}, not a causal LM"
    raise ValueError(f"{what} needs a causal (decoder-only) language model such as LLaMA, Qwen2, Mistral or GPT-2 "
                     f"with its LM head (AutoModelForCausalLM); got {detected}")


def _candidates(allowed: set, length: int, protect: Protect) -> List[int]:
    if protect == "ends":
        protected = {0, length - 1}
    elif protect is None:
        protected = set()
    elif isinstance(protect, (list, tuple, set, range)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                 for i in protect):
        bad = sorted(i for i in protect if not 0 <= i < length)
        if bad:
            raise ValueError(f"protect: blocks {bad} are not in 0..{length - 1}")
        protected = set(protect)
    else:
        raise ValueError(f"protect must be 'ends', a list of block indices or None; got {protect!r}")
    return sorted(allowed - protected)


def _blocks(model: nn.Module, layers):
    """(the hooked blocks, the indices that may be removed alone: shape-keeping blocks)."""
    selection = resolve_layers(model, layers)
    lists = {bl.name: bl for bl in find_blocks(model)} if isinstance(layers, str) else {}
    if selection.source in lists:
        allowed = set(removable_layers(model).get(selection.source, []))
    else:
        allowed = set(range(len(selection)))
    return selection, allowed


def rank_blocks(model: nn.Module, batches, method: str = "cka", *, layers="auto", protect: Protect = None,
                limit: Optional[int] = None, skip_first: bool = False, progress: bool = True) -> torch.Tensor:
    """One score per block of ``model``'s block list, lower = safer to remove (float64, CPU).

    Args:
        model: a decoder LM (Hugging Face LLaMA/Qwen2/Mistral/GPT-2 family ...); never modified.
        batches: calibration batches, dicts with ``input_ids`` and ``attention_mask``
            (``mpruner.data.lm_batches``); ``labels`` are ignored.
        method: see the module docstring (``"auto"`` is :data:`AUTO`).
        layers: the block list (``"auto"``: the model's, as ``mpruner.analyze`` finds it).
        protect: blocks that are not candidates of the loss-driven methods (their score is
            +inf); the similarity methods score every block.
        limit: ``"greedy"`` only: rounds to run (default: every candidate); blocks not chosen
            within them score +inf. A chosen block's score is its round (0, 1, ...).
        skip_first: leave out each sequence's first real token (the attention-sink position)
            from the similarity signals.
    """
    method = _check_method(method, allow_auto=True)
    batches = calibration_batches(batches, method)
    if method in LOSS_METHODS:
        check_causal_lm(model, f"method={method!r}")
    selection, allowed = _blocks(model, layers)
    L = len(selection)
    if method in SIMILARITY_SIGNALS:
        normalize = "rms" if method == "cka" else None
        return block_signals(model, batches, selection, normalize, skip_first, progress)[method]
    candidates = _candidates(allowed, L, protect)
    blocks = list(selection.modules)
    if method == "loo":
        return leave_one_out(model, batches, blocks, candidates, progress)
    rounds = len(candidates) if limit is None else min(int(limit), len(candidates))
    order, _ = greedy(model, batches, blocks, candidates, rounds, progress)
    scores = torch.full((L,), math.inf, dtype=torch.float64)
    for r, i in enumerate(order):
        scores[i] = float(r)
    return scores


def choose_blocks(model: nn.Module, batches, n: int, method: str = "auto", protect: Protect = "ends", *,
                  layers="auto", skip_first: bool = False, progress: bool = True) -> List[int]:
    """The sorted indices of the ``n`` blocks to remove from ``model``'s block list.

    ``protect="ends"`` (default) keeps the first and the last block, which decoder LMs depend on
    most (removing block 0 of SmolLM2-135M alone multiplies its perplexity by thousands); pass
    a list of indices, or None to make every removable block a candidate. Ties go to the later
    block. The model is never modified. See :func:`rank_blocks` for the rest.
    """
    method = _check_method(method, allow_auto=True)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    selection, allowed = _blocks(model, layers)
    L = len(selection)
    candidates = _candidates(allowed, L, protect)
    if n >= len(allowed):
        raise ValueError(f"n={n} would remove every removable block ({len(allowed)} of {L}); pass a smaller n")
    if n > len(candidates):
        raise ValueError(f"n={n}, but protect={protect!r} leaves {len(candidates)} candidate blocks "
                         f"({candidates}); pass a smaller n or protect fewer blocks (protect=None)")
    scores = rank_blocks(model, batches, method, layers=layers, protect=protect, limit=n, skip_first=skip_first,
                         progress=progress)
    order = sorted(candidates, key=lambda i: (float(scores[i]) if not math.isnan(scores[i]) else math.inf, -i))
    return sorted(order[:n])

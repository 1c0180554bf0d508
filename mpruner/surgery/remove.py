"""remove_layers and removable_layers: the public surgery entry points."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

from ..adapters import GenericAdapter, detect_adapter, resolve_adapter
from ..adapters.base import Adapter
from .plan import normalize_plan
from .record import append_step

Indices = Union[Sequence[int], Mapping]


def adapter_for(model: nn.Module, indices: Optional[Indices] = None) -> Adapter:
    """The adapter that handles a removal request on ``model``.

    A recognised architecture always uses its own adapter (the generic one would
    leave its config and layer indices stale). Otherwise the keys of a dict
    request name the containers, and a bare Sequential/ModuleList is its own.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    adapter = detect_adapter(model)
    if adapter is not None:
        return adapter
    if isinstance(indices, Mapping) and indices and all(isinstance(k, str) for k in indices):
        try:
            return GenericAdapter(model, list(indices))
        except ValueError as error:
            raise ValueError(f"indices: {type(model).__name__} is not a recognised architecture, so the keys "
                             f"of indices must name its nn.Sequential/nn.ModuleList block containers; {error}"
                             ) from None
    return resolve_adapter(model)


def remove_layers(model: nn.Module, indices: Indices, inplace: bool = False) -> nn.Module:
    """Remove blocks from ``model`` and repair it; return the pruned model.

    Args:
        model: a model ``find_blocks`` recognises, or any model whose block
            containers are named by the keys of a dict ``indices``.
        indices: block indices as ``find_blocks`` numbers them: a list for a
            model with one block list, or ``{block_list_name: [indices]}``
            (``{"encoder.block": [0, 2], "decoder.block": [1]}`` for T5; for an
            unrecognised model ``{"features": [3, 4]}``). An empty list removes
            nothing.
        inplace: modify ``model`` itself. By default a deep copy is pruned and
            ``model`` is never modified.

    Besides deleting the blocks, the architecture's adapter renumbers what
    carries a layer index (KV-cache ``layer_idx``), fixes the config fields
    that describe depth (``num_hidden_layers``, ``n_layer``, ``num_layers``,
    ``num_decoder_layers``, ``layer_types``, ``depths``) so that
    ``save_pretrained``/``from_pretrained`` round-trips, and hands T5's relative
    position bias to a stack's new first block. The removal is recorded on the
    returned model for ``save_pruned``.

    Raises:
        TypeError: ``model`` is not a module, ``indices`` is not a list of ints
            or a dict of them, or nothing recognises the model.
        ValueError: an unknown block-list name, an index out of range or given
            twice, a block that changes its input's shape (the message lists the
            removable indices), removing every block of a list, or a
            combination the architecture cannot take (an emptied HF ResNet
            stage). Everything is checked before anything is modified, also
            with ``inplace=True``.
    """
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    adapter = adapter_for(model, indices)
    lists = adapter.block_lists()
    plan = normalize_plan(indices, lists)
    adapter.check(plan, lists)

    if inplace:
        target, target_adapter, target_lists = model, adapter, lists
    else:
        try:
            target = copy.deepcopy(model)
        except Exception as error:  # any failure of a user's __deepcopy__
            raise TypeError(f"model could not be deep-copied ({type(error).__name__}: {error}); "
                            f"pass inplace=True to prune it in place") from error
        target_adapter = adapter.for_model(target)
        target_lists = target_adapter.block_lists()
    if plan:
        target_adapter.apply(plan, target_lists)
        append_step(target, adapter.name, target_lists, plan)
    return target


def removable_layers(model: nn.Module, path=None) -> Dict[str, List[int]]:
    """``{block_list_name: [indices that may be removed]}`` for ``model``.

    An index is listed when its block keeps its input's shape. Removing every
    block of a list is never allowed, and some architectures constrain
    combinations further (a Hugging Face ResNet stage keeps one block; a GPT-2
    with ``scale_attn_by_inverse_layer_idx`` only loses trailing blocks);
    ``remove_layers`` checks those.
    """
    adapter = resolve_adapter(model, path)
    return {bl.name: list(bl.removable) for bl in adapter.block_lists()}

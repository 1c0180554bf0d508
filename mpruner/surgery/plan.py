"""Validation of a removal request, before anything is copied or modified.

A plan is ``{block_list_name: sorted unique indices}`` with only non-empty
entries. Every rule that can be checked from the indices alone is checked
here, so that a bad request raises with the model untouched.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Dict, List, Sequence

import torch

from ..adapters import BlockList

Plan = Dict[str, List[int]]


def normalize_plan(indices, lists: Sequence[BlockList]) -> Plan:
    """Turn ``indices`` (a list, or a dict by block-list name) into a validated plan."""
    names = [bl.name for bl in lists]
    if isinstance(indices, Mapping):
        requested = dict(indices)
        for key in requested:
            if not isinstance(key, str):
                raise TypeError(f"indices: dict keys must be block-list names (str), got {key!r}; "
                                f"this model's block lists are {names}")
            if key not in names:
                raise ValueError(f"indices: this model has no block list named {key!r}; its block lists are "
                                 f"{names} (see mpruner.find_blocks)")
    else:
        if len(lists) != 1:
            example = ", ".join(f"{n!r}: [...]" for n in names)
            raise ValueError(f"indices: this model has {len(lists)} block lists ({names}); pass a dict "
                             f"such as {{{example}}}")
        requested = {names[0]: indices}

    plan = {}
    for block_list in lists:
        if block_list.name in requested:
            chosen = _validate(block_list, _as_index_list(requested[block_list.name], block_list.name))
            if chosen:
                plan[block_list.name] = chosen
    return plan


def _as_index_list(value, name: str) -> List[int]:
    hint = f"indices for {name!r} must be a list of block indices (ints), e.g. [1, 3]"
    if isinstance(value, torch.Tensor):
        value = value.tolist() if value.dim() == 1 else value
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{hint}; got {value!r}")
    result = []
    for item in value:
        if isinstance(item, bool):
            raise TypeError(f"{hint}; got the bool {item!r}")
        try:
            result.append(operator.index(item))
        except TypeError:
            raise TypeError(f"{hint}; got {item!r} ({type(item).__name__})") from None
    return result


def _validate(block_list: BlockList, chosen: List[int]) -> List[int]:
    name, length = block_list.name, len(block_list)
    duplicates = sorted({i for i in chosen if chosen.count(i) > 1})
    if duplicates:
        raise ValueError(f"indices for {name!r} list {duplicates} more than once; give each block once")
    out_of_range = [i for i in chosen if not 0 <= i < length]
    if out_of_range:
        raise ValueError(f"indices {out_of_range} are out of range for {name!r}, which has {length} blocks "
                         f"(valid indices 0..{length - 1})")
    removable = set(block_list.removable)
    fixed = [i for i in chosen if i not in removable]
    if fixed:
        where = ", ".join(f"{i} ({block_list.names[i]})" for i in fixed)
        raise ValueError(f"blocks {where} of {name!r} change the shape of their input (no identity shortcut) "
                         f"and cannot be removed; removable indices of {name!r}: {sorted(removable)}")
    if length and len(chosen) == length:
        raise ValueError(f"indices remove all {length} blocks of {name!r}; keep at least one")
    return sorted(chosen)

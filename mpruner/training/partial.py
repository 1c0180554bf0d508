"""Which parameters healing trains: ``Finetuner(train=...)``.

- ``"all"``: every parameter;
- ``"lora"``: LoRA adapters only (``lora=`` options, or rank-8 adapters on every linear layer
  of the blocks);
- ``"around-cuts"``: the kept blocks next to each removed run of blocks, and every norm layer
  (fine-tuning where the model was cut does better than LoRA at equal budget: Lu et al.,
  "Reassessing layer pruning", 2026);
- ``"last:K"``: the last K blocks, the norm after them and the LM head.

``freeze_embeddings=True`` also freezes the input and output embeddings (tied or not); with tied
embeddings, training the LM head trains the input embeddings too. Frozen parameters are left
bitwise unchanged: they are not given to the optimizer at all.
"""
from __future__ import annotations

import contextlib
import re
from typing import Dict, List, Optional, Set, Tuple

import torch.nn as nn

from ..adapters import find_blocks
from ..surgery.record import get_record

FIXED_MODES = ("all", "lora", "around-cuts")
_LAST = re.compile(r"^last:(\d+)$")


def check_train(train: str) -> str:
    if isinstance(train, str) and (train in FIXED_MODES or _LAST.match(train)):
        if _LAST.match(train) and int(_LAST.match(train).group(1)) < 1:
            raise ValueError(f"train={train!r}: K must be >= 1")
        return train
    raise ValueError(f"train must be one of {', '.join(map(repr, FIXED_MODES))} or 'last:K' (K blocks), "
                     f"got {train!r}")


def block_origins(model: nn.Module) -> Optional[Tuple[str, List[int], int]]:
    """(block-list name, the original index of each block the model has now, the original count)
    from the removal record mpruner's surgery leaves on a pruned model; None without one."""
    record = get_record(model)
    if not record or not record.get("steps"):
        return None
    lists = {bl.name: len(bl) for bl in find_blocks(model)}
    for name, original in record["original"].items():
        kept = list(range(original))
        for step in record["steps"]:
            drop = set(step.get(name, []))
            kept = [k for j, k in enumerate(kept) if j not in drop]
        if kept != list(range(original)) and lists.get(name) == len(kept):
            return name, kept, original
    return None


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith(("Norm", "RMSNorm"))


def _embedding_params(model: nn.Module) -> Set[int]:
    out = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        get = getattr(model, getter, None)
        module = get() if callable(get) else None
        if module is not None:
            out |= {id(p) for p in module.parameters()}
    return out


def _blocks(model: nn.Module, what: str):
    lists = find_blocks(model)
    if not lists:
        raise ValueError(f"train={what!r} trains blocks of the model's block list, but mpruner finds none in "
                         f"{type(model).__name__}; use train='all'")
    return lists[0]


def trainable(model: nn.Module, train: str, freeze_embeddings: bool) -> Set[int]:
    """ids of the parameters ``train`` trains (``"lora"``: decided by the adapters instead)."""
    if train == "all":
        chosen = {id(p) for p in model.parameters()}
    elif train == "around-cuts":
        origins = block_origins(model)
        if origins is None:
            raise ValueError("train='around-cuts' trains the blocks next to each removed run, but this model carries "
                             "no record of removed blocks (mpruner.remove_layers / MPruner write it); use "
                             "train='all' or 'last:K'")
        name, kept, original = origins
        blocks = next(bl for bl in find_blocks(model) if bl.name == name)
        near = set()
        for j in range(len(kept)):
            before = kept[j - 1] if j > 0 else -1
            after = kept[j + 1] if j + 1 < len(kept) else original
            if kept[j] - before > 1 or after - kept[j] > 1:
                near.add(j)
        chosen = {id(p) for j in near for p in blocks.modules[j].parameters()}
        chosen |= {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    else:
        k = int(_LAST.match(train).group(1))
        blocks = _blocks(model, train)
        if k > len(blocks):
            raise ValueError(f"train={train!r}: the model has {len(blocks)} blocks; K must be in 1..{len(blocks)}")
        inside = {id(p) for m in blocks.modules for p in m.parameters()}
        chosen = {id(p) for m in blocks.modules[-k:] for p in m.parameters()}
        chosen |= {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)
                   if id(p) not in inside}  # the final norm, not the frozen blocks' norms
        head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
        if head is None:
            raise ValueError(f"train={train!r} trains the LM head too, but {type(model).__name__} has no "
                             "get_output_embeddings(); use train='all' or 'around-cuts'")
        chosen |= {id(p) for p in head.parameters()}
    if freeze_embeddings:
        chosen -= _embedding_params(model)
    return chosen


@contextlib.contextmanager
def only_trainable(model: nn.Module, train: str, freeze_embeddings: bool):
    """``requires_grad`` set for ``train``'s parameters only, and restored afterwards."""
    saved: Dict[int, bool] = {id(p): p.requires_grad for p in model.parameters()}
    if train == "lora":
        yield
        return
    chosen = trainable(model, train, freeze_embeddings)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen and saved[id(p)])
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])

"""save_pruned / load_pruned: checkpoints of pruned models without pickle.

A checkpoint is a directory with

* ``model.safetensors``: the weights (shared tensors such as tied embeddings
  stored once), with the removal record in its metadata;
* ``mpruner.json``: the same record, readable by people and tools;
* ``README.md``: a model card (Hugging Face YAML metadata and what was removed,
  :mod:`mpruner.surgery.card`).

The copy inside the weights file is the authoritative one: it is written in the
same ``os.replace`` as the weights, so an interrupted save can never pair new
weights with an old record.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from .card import write_model_card
from .record import ATTRIBUTE, get_record
from .remove import adapter_for, remove_layers
from .reshape import apply_shapes

WEIGHTS_NAME = "model.safetensors"
RECORD_NAME = "mpruner.json"
FORMAT = "mpruner.pruned"
VERSION = 1
METADATA_KEY = "mpruner_record"


def _record_for(model: nn.Module) -> dict:
    record = get_record(model)
    if record is None:  # never pruned: an empty history still lets load_pruned check the factory
        try:
            adapter = adapter_for(model)
            lists = adapter.block_lists()
            record = {"adapter": adapter.name, "original": {bl.name: len(bl) for bl in lists}, "steps": []}
        except TypeError:
            record = {"adapter": None, "original": {}, "steps": []}
    return {"format": FORMAT, "version": VERSION,
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}", **record}


def _atomic_write(final: Path, write: Callable[[str], None]) -> None:
    temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        write(str(temporary))
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_pruned(model: nn.Module, path: Union[str, os.PathLike], card: Optional[dict] = None) -> Path:
    """Save ``model``'s weights and removal record to the directory ``path``.

    For models without ``save_pretrained`` (torchvision, EfficientNet, your
    own). Reload with ``load_pruned(path, model_factory)``. Returns the path.
    A model card ``README.md`` is written beside them (``card``: the keyword
    arguments of :func:`mpruner.surgery.card.model_card`, e.g. ``{"summary": ...}``);
    a README.md that mpruner did not write is kept.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"path {str(directory)!r} is a file; save_pruned writes a directory")
    directory.mkdir(parents=True, exist_ok=True)
    record = _record_for(model)
    text = json.dumps(record, indent=2, sort_keys=True)
    metadata = {"format": "pt", METADATA_KEY: text}
    _atomic_write(directory / WEIGHTS_NAME, lambda f: save_model(model, f, metadata=metadata))
    _atomic_write(directory / RECORD_NAME, lambda f: Path(f).write_text(text + "\n"))
    write_model_card(directory, model, **(card or {}))
    return directory


def read_record(path: Union[str, os.PathLike]) -> dict:
    """The removal record of a checkpoint written by ``save_pruned``."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{str(weights)!r} does not exist; path must be a directory written by "
                                f"mpruner.save_pruned")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            text = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for damaged headers
        raise ValueError(f"{str(weights)!r} is not a readable safetensors file ({type(error).__name__}: "
                         f"{str(error)[:120]}); the checkpoint is damaged or was not written by "
                         f"mpruner.save_pruned") from None
    if text is None:
        raise ValueError(f"{str(weights)!r} has no mpruner record in its metadata; was it written by "
                         f"mpruner.save_pruned?")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{str(weights)!r}: the mpruner record in its metadata is not valid JSON "
                         f"({str(error)[:80]})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or \
            not isinstance(record.get("version"), int) or record["version"] > VERSION:
        got = (record.get("format"), record.get("version")) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{str(weights)!r} holds a record of format/version {got!r}; this mpruner reads "
                         f"{FORMAT!r} up to version {VERSION}")
    problem = _record_problem(record)
    if problem:
        raise ValueError(f"{str(weights)!r}: malformed mpruner record: {problem}")
    return record


def _record_problem(record: dict) -> str:
    """What is wrong with a record's fields (empty when nothing): types, and indices that are plain ints."""
    missing = [k for k in ("adapter", "original", "steps") if k not in record]
    if missing:
        return f"it has no {', '.join(repr(k) for k in missing)}"
    if not (record.get("adapter") is None or isinstance(record.get("adapter"), str)):
        return f"'adapter' must be a string, got {record.get('adapter')!r:.40}"
    original, steps = record.get("original"), record.get("steps")
    if not isinstance(original, dict) or not all(isinstance(k, str) and isinstance(v, int) and not
                                                 isinstance(v, bool) and v >= 0 for k, v in original.items()):
        return "'original' must map block-list names to block counts"
    if not isinstance(steps, list):
        return "'steps' must be a list"
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(j, int) and not isinstance(j, bool)
                                                                   and j >= 0 for j in v)
                for k, v in step.items()):
            return f"steps[{i}] must map block-list names to lists of indices >= 0"
        unknown = sorted(set(step) - set(original))
        if unknown:
            return f"steps[{i}] names block lists {unknown} that 'original' does not have"
    width = record.get("width", [])
    if not isinstance(width, list) or not all(
            isinstance(w, dict) and isinstance(w.get("after"), int) and not isinstance(w.get("after"), bool)
            and 0 <= w["after"] <= len(steps) and isinstance(w.get("modules"), dict) for w in width):
        return "'width' must be a list of {'after': step index, 'modules': {name: shapes}}"
    return ""


def _device_of(model: nn.Module) -> torch.device:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def load_pruned(path: Union[str, os.PathLike], model_factory) -> nn.Module:
    """Rebuild a pruned model saved with ``save_pruned``.

    Args:
        path: the checkpoint directory.
        model_factory: a callable returning the original, unpruned model (its
            weights are overwritten), e.g. ``lambda: torchvision.models.resnet50()``;
            an ``nn.Module`` instance is used as is and modified in place.

    The recorded removals (and width changes: the new shapes of resized modules) are
    replayed on the fresh model, then the weights are loaded strictly (a missing or unexpected tensor raises ValueError).
    """
    record = read_record(path)
    if isinstance(model_factory, nn.Module):
        model = model_factory
    elif callable(model_factory):
        model = model_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_factory must return a torch.nn.Module, it returned {type(model).__name__}")
    else:
        raise TypeError(f"model_factory must be a callable that builds the original model, e.g. "
                        f"lambda: MyNet(), got {type(model_factory).__name__}")

    if record["steps"]:
        try:
            adapter = adapter_for(model, record["steps"][0])
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{str(Path(path) / WEIGHTS_NAME)!r}: its record's block lists "
                             f"{sorted(record['steps'][0])} are not in the model model_factory built ({error})"
                             ) from None
        found = {bl.name: len(bl) for bl in adapter.block_lists()}
        if adapter.name != record["adapter"] or found != record["original"]:
            raise ValueError(
                f"{str(Path(path) / WEIGHTS_NAME)!r}: model_factory built a model whose blocks are {found} "
                f"(adapter {adapter.name!r}), but the "
                f"checkpoint was pruned from {record['original']} (adapter {record['adapter']!r}); pass a factory "
                f"that builds the original, unpruned architecture ({record.get('model_class')})")
    width = record.get("width", [])
    for index in range(len(record["steps"]) + 1):
        for resize in (w for w in width if w["after"] == index):  # width pruning replayed between removals
            try:
                apply_shapes(model, resize["modules"])
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(f"{str(Path(path) / WEIGHTS_NAME)!r}: the width change after step {index} of its "
                                 f"record cannot be replayed on the model ({error}); the record is damaged or the "
                                 "factory is not the original architecture") from None
        if index < len(record["steps"]):
            try:
                remove_layers(model, record["steps"][index], inplace=True)
            except (ValueError, IndexError, KeyError, TypeError) as error:
                raise ValueError(f"{str(Path(path) / WEIGHTS_NAME)!r}: step {index} of its record cannot be replayed "
                                 f"on the model ({error}); the record is damaged or the factory is not the "
                                 f"original architecture") from None

    try:
        missing, unexpected = load_model(model, str(Path(path) / WEIGHTS_NAME), strict=False,
                                         device=str(_device_of(model)))
    except Exception as error:  # shape mismatches (RuntimeError) raise even with strict=False; damaged data too
        raise ValueError(f"the weights in {str(path)!r} do not fit the rebuilt model ({error}); is "
                         f"model_factory the architecture that was pruned ({record.get('model_class')})?") from None
    if missing or unexpected:
        raise ValueError(f"the weights in {str(path)!r} do not fit the rebuilt model: missing {sorted(missing)[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {sorted(unexpected)[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}; is model_factory the architecture that was "
                         f"pruned ({record.get('model_class')})?")
    if record["steps"] or record.get("width"):  # the rebuilt model carries the whole history, to be saved again
        setattr(model, ATTRIBUTE, {k: record[k] for k in ("adapter", "original", "steps", "width") if k in record})
    return model

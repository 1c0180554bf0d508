"""Atomic checkpoints of a pruning run: an accepted model plus a JSON state.

Layout of ``checkpoint_dir``::

    state.json        what the run has done (history, granularity, counters, options)
    model-0003/       the last accepted model (mpruner.save_pruned: safetensors + record)

Every file is written to a temporary name and renamed into place; ``state.json`` is
replaced last and names the model directory it belongs to, so a run killed at any
moment leaves either the previous consistent state or the new one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch.nn as nn

from ..surgery import save_pruned

STATE = "state.json"


class CheckpointMismatch(ValueError):
    """Resuming from a checkpoint made with other options; ``differences`` maps each
    differing option to ``(in the checkpoint, in this run)``."""

    def __init__(self, directory: Path, differences: dict):
        self.directory, self.differences = directory, differences
        changed = "; ".join(f"{k}: {saved!r} in the checkpoint, {now!r} now" for k, (saved, now) in differences.items())
        super().__init__(f"the checkpoint in {directory} was made with other options ({changed}); resume with the "
                         f"same options, or use another checkpoint_dir to start afresh")


def option_differences(saved: dict, now: dict) -> dict:
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def check_directory(path: Path) -> None:
    """Refuses a checkpoint directory that could not be written, before any work is done."""
    p = Path(os.path.abspath(path))
    if p.exists() and not p.is_dir():
        raise ValueError(f"checkpoint_dir {str(path)!r} is an existing file, not a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"checkpoint_dir {str(path)!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"checkpoint_dir {str(path)!r} cannot be created: {str(parent)!r} is not writable")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_model_atomic(directory: Path, name: str, model: nn.Module) -> str:
    """Writes the model to ``directory/name`` via a temporary directory and a rename."""
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pruned(model, tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return name


def read_state(directory: Path) -> Optional[dict]:
    path = directory / STATE
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def read_state_file(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def prune_old_models(directory: Path, keep: str) -> None:
    for p in directory.glob("model-*"):
        if p.name != keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    for p in directory.glob(".model-*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)

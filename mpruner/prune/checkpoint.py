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
import math
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch.nn as nn

from ..surgery import save_pruned

STATE = "state.json"
MODEL_DIR = re.compile(r"model-[0-9]{4,9}")  # the only names a state may point at (no "../", no "/")
MAX_STATE_BYTES = 64 * 2**20                   # a real state is kilobytes: refuse to parse a huge file

# Field -> check, for state.json as _save writes it (version 1).
_NUMBER = (int, float)
STATE_FIELDS = {
    "version": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "options": lambda v: isinstance(v, dict),
    "iteration": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "granularity": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "metric_before": lambda v: v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool)),
    "metric_current": lambda v: v is None or (isinstance(v, _NUMBER) and not isinstance(v, bool)),
    "done": lambda v: isinstance(v, bool),
    "stop_reason": lambda v: isinstance(v, str),
    "seconds": lambda v: isinstance(v, dict) and all(isinstance(x, _NUMBER) for x in v.values()),
    "model_dir": lambda v: isinstance(v, str) and MODEL_DIR.fullmatch(v) is not None,
    "rejected": lambda v: isinstance(v, list) and all(isinstance(r, list) and all(_index(i) for i in r) for r in v),
    "excluded": lambda v: isinstance(v, list) and all(_index(i) for i in v),
    "history": lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
}


def _index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and i >= 0


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; this checkpoint is damaged or was not written by mpruner. Move it away "
                      "(or use another checkpoint_dir) to start afresh; mpruner will not overwrite it")


def validate_state(path: Path, state) -> dict:
    """Checks a parsed state.json field by field; a ValueError names the file and the field."""
    if not isinstance(state, dict):
        raise _bad(path, f"holds a {type(state).__name__}, not a JSON object")
    if state.get("version") != 1:
        raise _bad(path, f"has version {state.get('version')!r}; this mpruner reads version 1")
    for key, ok in STATE_FIELDS.items():
        if key not in state:
            raise _bad(path, f"has no {key!r}")
        if not ok(state[key]):
            shown = repr(state[key])
            raise _bad(path, f"has an invalid {key!r}: {shown[:60]}{'...' if len(shown) > 60 else ''}")
    for key in ("metric_before", "metric_current"):
        if isinstance(state[key], float) and not math.isfinite(state[key]):
            raise _bad(path, f"has a non-finite {key!r}")
    model = path.parent / state["model_dir"]
    if not model.is_dir():
        raise _bad(path, f"names the model directory {state['model_dir']!r}, which does not exist")
    return state


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
    """The checked state of ``directory``, None when it has none; ValueError naming the file when damaged."""
    path = directory / STATE
    if not path.exists():
        return None
    if not path.is_file():
        raise _bad(path, "is not a file")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise _bad(path, f"is {path.stat().st_size} bytes, more than a state can be ({MAX_STATE_BYTES})")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, an integer of > 4300 digits, deep nesting
        raise _bad(path, f"is not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    return validate_state(path, state)


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

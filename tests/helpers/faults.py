"""Fault injection for the pruning loop: kill points, a full disk, damaged files.

Reusable by any stage that runs under MPruner: a kill point is a name -> a function that
patches one place so that its N-th pass kills the process (SIGKILL: no cleanup, no
``finally``), as a crash, an OOM kill or a power cut would. ``KILL_POINTS`` lists them;
a new stage adds its own with one entry. ``enospc_on_write(n)`` makes the n-th checkpoint
write fail with ENOSPC instead.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path
from unittest import mock

import torch


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _on_nth(n, fn, after=False):
    """fn wrapped so that its n-th call kills the process (before it runs, or right after)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n and not after:
            _die()
        out = fn(*args, **kwargs)
        if calls["n"] == n and after:
            _die()
        return out
    return wrapped


def _replace_of(kind, n, after):
    """Kills at the n-th os.replace of a checkpoint file of this kind ('state' or 'model')."""
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst, *a, **k):
        name = os.path.basename(os.fspath(dst))
        hit = (kind == "state" and name == "state.json") or (kind == "model" and name.startswith("model-")) or \
            (kind == "healing" and name == "healing.pt")
        if hit:
            calls["n"] += 1
            if calls["n"] == n and not after:
                _die()
        out = real(src, dst, *a, **k)
        if hit and calls["n"] == n and after:
            _die()
        return out
    return mock.patch("os.replace", replace)


def _optimizer_step(n):
    """Kills inside the n-th optimizer step of fine-tuning, after the gradients, mid-update."""
    calls = {"n": 0}

    def hook(optimizer, args, kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            with torch.no_grad():  # half an update: the first parameter group changed, then death
                for p in optimizer.param_groups[0]["params"][:1]:
                    p.add_(1.0)
            _die()
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(hook)
    return contextlib.closing(type("H", (), {"close": lambda self: handle.remove()})())


def kill_point(name: str, n: int):
    """A context manager arming kill point ``name`` at its n-th pass."""
    from mpruner.prune import loop

    if name == "analysis":
        return mock.patch.object(loop.MPruner, "_analyze", _on_nth(n, loop.MPruner._analyze))
    if name == "surgery":
        return mock.patch.object(loop, "remove_layers", _on_nth(n, loop.remove_layers, after=True))
    if name == "finetune step":
        return _optimizer_step(n)
    if name == "state write, before rename":
        return _replace_of("state", n, after=False)
    if name == "state write, after rename":
        return _replace_of("state", n, after=True)
    if name == "model write, before rename":
        return _replace_of("model", n, after=False)
    if name == "between model and state renames":
        return _replace_of("model", n, after=True)
    if name == "healing state write, before rename":
        return _replace_of("healing", n, after=False)
    raise ValueError(f"unknown kill point {name!r}; known: {KILL_POINTS}")


KILL_POINTS = ("analysis", "surgery", "finetune step", "state write, before rename", "state write, after rename",
               "model write, before rename", "between model and state renames", "healing state write, before rename")


@contextlib.contextmanager
def enospc_on_write(n: int):
    """The n-th checkpoint file write (state.json or a model's files) fails: the disk is full."""
    from mpruner.prune import checkpoint as ckpt

    calls = {"n": 0}
    real_json, real_model = ckpt.write_json_atomic, ckpt.save_pruned

    def full(kind, real):
        def write(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                # What a full disk looks like half way: a partial temporary file, then ENOSPC.
                if kind == "state.json":
                    path = args[0]
                    path.with_name(f".{path.name}.tmp-{os.getpid()}").write_bytes(b'{"version": 1, "opt')
                else:
                    directory = Path(args[1])
                    directory.mkdir(parents=True, exist_ok=True)
                    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), kind)
            return real(*args, **kwargs)
        return write
    with mock.patch.object(ckpt, "write_json_atomic", full("state.json", real_json)), \
            mock.patch.object(ckpt, "save_pruned", full("model", real_model)):
        yield calls


def count_writes():
    """A context manager counting the checkpoint writes of a run (calls['n'] afterwards)."""
    return enospc_on_write(0)

"""Healing that survives a kill: a Finetuner call's state written every few minutes.

``Finetuner(checkpoint_dir=..., checkpoint_every=seconds)`` writes ``healing.pt`` there at most
every ``checkpoint_every`` seconds (after an optimizer step): the trained module's weights, the
optimizer and schedule, how far it got (step, tokens, position in the data), the RNG state and the
recipe. Written to a temporary file and renamed, so a run killed at any moment (SIGKILL
included) leaves either the previous state or the new one. A later call on the same starting
model continues from it, losing at most ``checkpoint_every`` seconds of work, and takes the
steps the uninterrupted call would have taken; a call with another recipe is refused, naming
the option. The file is removed when the call finishes.

Inside :class:`mpruner.MPruner` with a ``checkpoint_dir``, each attempt's healing checkpoints
into that directory by itself (:func:`healing_checkpoint`), so ``run(resume=True)`` after a kill
resumes the healing of the attempt it was in.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

FILE = "healing.pt"
_WHERE: contextvars.ContextVar = contextvars.ContextVar("mpruner_healing_checkpoint", default=None)


@contextlib.contextmanager
def healing_checkpoint(directory, key: str):
    """Finetuner calls inside checkpoint their healing into ``directory`` (unless given their own),
    tagged with ``key`` (e.g. the attempt), so a resumed run picks up only its own state."""
    token = _WHERE.set((Path(directory), str(key)))
    try:
        yield
    finally:
        _WHERE.reset(token)


def current() -> Optional[Tuple[Path, str]]:
    return _WHERE.get()


def fingerprint(model: nn.Module) -> str:
    """A digest of the starting weights: a state is only resumed onto the model it started from."""
    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) + p.numel() for p in model.parameters())
    return f"{sum(1 for _ in model.parameters())}:{total!r}"


class RecipeMismatch(ValueError):
    pass


class HealingState:
    def __init__(self, directory: Path, key: str, recipe: Dict, every: float, writer: bool):
        self.path = Path(directory) / FILE
        self.key, self.recipe, self.every, self.writer = key, recipe, float(every), writer
        self.last = time.monotonic()

    def load(self) -> Optional[Dict]:
        """The saved state of this call (same key), or None; refuses a changed recipe."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file: start over rather than lose the run
            import warnings

            first = (str(error).splitlines() or [""])[0][:200]  # torch's unpickling errors run to pages
            warnings.warn(f"{self.path} could not be read ({type(error).__name__}: {first}); healing starts over",
                          RuntimeWarning, stacklevel=3)
            return None
        if state.get("key") != self.key:
            return None  # another attempt's or another model's: this call starts fresh and overwrites it
        changed = sorted(k for k in set(self.recipe) | set(state["recipe"])
                         if self.recipe.get(k) != state["recipe"].get(k))
        if changed:
            detail = ", ".join(f"{k}={state['recipe'].get(k)!r} there, {self.recipe.get(k)!r} now" for k in changed)
            raise RecipeMismatch(f"{self.path} holds a healing run made with another recipe ({detail}); resume with "
                                 f"the same options, or delete {self.path} to start the healing over")
        return state

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, trained: nn.Module, optimizer, scheduler, progress: Dict) -> None:
        self.last = time.monotonic()
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"key": self.key, "recipe": self.recipe, "progress": progress,
                 "model": {k: v.detach().cpu() for k, v in trained.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": torch.get_rng_state()}
        tmp = self.path.with_name(f"{FILE}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def restore(self, state: Dict, trained: nn.Module, optimizer, scheduler) -> Dict:
        trained.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        return state["progress"]

    def clear(self) -> None:
        if self.writer:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def interrupt_between_steps(enabled: bool):
    """Ctrl-C while healing with a checkpoint: the step in progress finishes, its state is saved
    and ``KeyboardInterrupt`` is raised then (``pending()`` tells the loop); a second Ctrl-C stops at
    once. Off when there is nothing to save, or outside the main thread."""
    flag = {"hit": False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        flag["hit"] = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is an ordinary one
        print("\nmpruner: Ctrl-C: finishing this healing step to save its state (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["hit"]
    finally:
        if signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, previous)

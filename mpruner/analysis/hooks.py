"""The lifetime of a set of module hooks: armed on ``__enter__``, removed on ``__exit__``.

Every capture in mpruner (block outputs, block inputs, Wanda's input norms) holds hooks
that must never outlive the pass that needs them: a hook left on the user's model would
keep running (and holding tensors) after mpruner returned. Arming removes what it armed
when one registration fails half-way; removal also runs when the forward pass raised.
"""
from __future__ import annotations

import abc
from typing import Iterator, List

from torch.utils.hooks import RemovableHandle


class HookSet(abc.ABC):
    """Base of a context manager owning hooks; subclasses yield their handles from ``_arm``."""

    def __init__(self):
        self._handles: List[RemovableHandle] = []

    @abc.abstractmethod
    def _arm(self) -> Iterator[RemovableHandle]:
        """Register the hooks, yielding each handle as it is made."""

    def _clear(self) -> None:
        """Forget per-batch state once the hooks are gone (subclasses override)."""

    def __enter__(self):
        try:
            for handle in self._arm():
                self._handles.append(handle)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        while self._handles:
            self._handles.pop().remove()
        self._clear()

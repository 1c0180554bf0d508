"""A healing budget in tokens, the progress bar that shows it (tokens/s, ETA), and the batches of each step."""
from __future__ import annotations

import re
import time
from typing import Iterable, Optional

import torch

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
_TOKENS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgb]?)\s*$", re.IGNORECASE)


def parse_tokens(text) -> int:
    """``"300k"`` -> 300000, ``"1.5M"`` -> 1500000, ``"4096"`` -> 4096 (the ``--heal-tokens`` syntax)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _TOKENS.match(str(text))
        if not m:
            raise ValueError(f"a token count is a number with an optional k, M or G suffix (300k, 1.5M), got "
                             f"{text!r}")
        value = int(round(float(m.group(1)) * _SUFFIX[m.group(2).lower()]))
    if value < 1:
        raise ValueError(f"a token count must be >= 1, got {text!r}")
    return value


def batch_tokens(batch) -> Optional[int]:
    """The real tokens of a token batch (``attention_mask`` ones, else every ``input_ids`` entry);
    None for a batch that is not a dict of token ids."""
    if not isinstance(batch, dict) or not isinstance(batch.get("input_ids"), torch.Tensor):
        return None
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    return int(batch["input_ids"].numel())


def group_tokens(group) -> Optional[int]:
    counts = [batch_tokens(b) for b in group]
    return None if any(c is None for c in counts) else sum(counts)


class Meter:
    """One bar per Finetuner call: by tokens when there is a token budget (rate and ETA in
    tokens), else by optimizer steps with the token rate beside the loss."""

    def __init__(self, enabled: bool, total_steps: Optional[int], max_tokens: Optional[int], done_steps: int = 0,
                 done_tokens: int = 0):
        self.bar, self.by_tokens = None, max_tokens is not None
        self.start, self.start_tokens, self.tokens = time.perf_counter(), done_tokens, done_tokens
        if enabled:
            from tqdm.auto import tqdm

            if self.by_tokens:
                self.bar = tqdm(total=max_tokens, initial=done_tokens, desc="heal", unit="tok", unit_scale=True,
                                leave=False, dynamic_ncols=True)
            else:
                self.bar = tqdm(total=total_steps, initial=done_steps, desc="fine-tune", leave=False,
                                dynamic_ncols=True)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return (self.tokens - self.start_tokens) / elapsed if elapsed > 0 else 0.0

    def step(self, tokens: Optional[int], loss: float) -> None:
        self.tokens += tokens or 0
        if self.bar is None:
            return
        # postfix without its own refresh: one redraw per step (a log shows each step once)
        if self.by_tokens:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(tokens or 0)
        else:
            postfix = dict(loss=f"{loss:.4f}")
            if tokens:
                postfix["tok/s"] = f"{self.rate():.0f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def with_last(items: Iterable):
    """(item, is_last) pairs, looking one item ahead."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


def step_groups(batches: Iterable, size: int):
    """The batches of each optimizer step: ``size`` at a time (the last group may be shorter)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group

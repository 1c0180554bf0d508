"""Where captured hidden states go for the token metrics: cosine similarity and angular distance.

One engine call per batch (``torch.ops.mpruner._cosine_sums``) takes every pair of the
blocks' outputs, and, with block inputs, every input against every output; only (L, L)
float64 sums and a token count outlive the batch. A block's input is usually the previous
block's output (the very same tensor): such duplicates go to the kernel once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..engine.similarity import cosine_sums, token_rows
from .sinks import SinkResult
from .views import BatchContext


def _key(t: torch.Tensor):
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device)


class SimilaritySink:
    """Mean cosine / angular distance over real tokens (``view="tokens"``) or last tokens."""

    def __init__(self, metric: str, view: str, names: Sequence[str], with_inputs: bool, device):
        self.metric, self.view, self.names, self.with_inputs, self.device = metric, view, list(names), with_inputs, \
            device
        L = len(self.names)
        zeros = lambda: torch.zeros(L, L, dtype=torch.float64, device=device)  # noqa: E731
        self.cos, self.ang = zeros(), zeros()
        self.io_cos, self.io_ang = (zeros(), zeros()) if with_inputs else (None, None)
        self.tokens = self.num_batches = self.sequences = 0
        self.skipped_batches = self.skipped_samples = 0
        self.need = 1

    def update(self, outputs: List[Tuple[torch.Tensor, Optional[torch.Tensor]]],
               inputs: Optional[List[Tuple[torch.Tensor, Optional[torch.Tensor]]]], other, ctx: BatchContext) -> None:
        xs = [x for x, _ in outputs]
        for name, x in zip(self.names, xs):
            if x.shape != xs[0].shape:
                raise ValueError(f"metric='cosine'/'angular' compares blocks token by token, but in batch {ctx.index} "
                                 f"block {name!r} gives {tuple(x.shape)} and {self.names[0]!r} gives "
                                 f"{tuple(xs[0].shape)}; use metric='cka' for blocks of different shapes")
        ins = [x for x, _ in inputs] if inputs else []
        for name, x in zip(self.names, ins):
            if x.shape != xs[0].shape:
                raise ValueError(f"block {name!r} takes a {tuple(x.shape)} input but gives a {tuple(xs[0].shape)} "
                                 "output; Block Influence needs blocks whose input and output have one shape")
        mask = next((m for _, m in list(outputs) + list(inputs or []) if m is not None), None)
        B, T = xs[0].shape[:2]
        rows = token_rows(mask, B, T, self.view, xs[0].device)
        if rows.numel() == 0:
            self.skipped_batches += 1
            self.skipped_samples += B
            return
        unique, index = [], []
        seen = {}
        for t in xs + ins:
            k = _key(t)
            if k not in seen:
                seen[k] = len(unique)
                unique.append(t)
            index.append(seen[k])
        cos, ang = cosine_sums(unique, rows)
        idx = torch.tensor(index, device=cos.device)
        cos, ang = cos[idx][:, idx].to(self.device), ang[idx][:, idx].to(self.device)
        L = len(xs)
        if not bool(torch.isfinite(cos).all()):
            bad = [self.names[i % L] for i in (~torch.isfinite(torch.diagonal(cos))).nonzero().flatten().tolist()]
            raise ValueError(f"NaN or Inf in the hidden states of {', '.join(map(repr, sorted(set(bad)))) or 'a block'} "
                             f"in batch {ctx.index} (real tokens); check the model and that batch")
        self.cos += cos[:L, :L]
        self.ang += ang[:L, :L]
        if self.with_inputs:
            self.io_cos += cos[L:, :L]
            self.io_ang += ang[L:, :L]
        self.tokens += int(rows.numel())
        self.sequences += B if mask is None else int(mask.bool().any(1).sum())
        self.num_batches += 1

    # torch.distributed (see mpruner.analysis.reduction): the float64 sums and the counts,
    # summed over ranks in one all-reduce; zeros are a valid "nothing seen".
    def _sums(self) -> List[torch.Tensor]:
        return [self.cos, self.ang] + ([self.io_cos, self.io_ang] if self.with_inputs else [])

    def distributed_state(self) -> List[torch.Tensor]:
        return [torch.cat([t.flatten().double().cpu() for t in self._sums()])]

    def distributed_counts(self) -> List[int]:
        return [self.num_batches, self.tokens, self.sequences, self.skipped_batches, self.skipped_samples]

    def distributed_load(self, tensors: List[torch.Tensor], counts: List[int]) -> None:
        L = len(self.names)
        parts = [p.reshape(L, L).to(self.device) for p in tensors[0].split(L * L)]
        self.cos, self.ang = parts[0], parts[1]
        if self.with_inputs:
            self.io_cos, self.io_ang = parts[2], parts[3]
        self.num_batches, self.tokens, self.sequences, self.skipped_batches, self.skipped_samples = counts

    def result(self) -> SinkResult:
        if self.num_batches == 0:
            raise ValueError("no batch had a real token (attention_mask all zero?); nothing to compare"
                             if self.skipped_batches else "data yielded no batches; pass at least one batch")
        n = float(self.tokens)
        matrix = (self.cos if self.metric == "cosine" else self.ang) / n
        io = None
        if self.with_inputs:
            io = {"cosine": (self.io_cos / n).cpu(), "angular": (self.io_ang / n).cpu()}
        extra = {"estimator": "per-token", "num_tokens": self.tokens, "sequences": self.sequences}
        return SinkResult(matrix.cpu(), self.tokens if self.view == "tokens" else self.sequences, extra, io)


class WithBlockIO:
    """CKA together with the token cosines of each block's input against its output, from one
    pass: each hooked output arrives as (CKA features of the view, (token states, mask))."""

    def __init__(self, cka, similarity: SimilaritySink):
        self.cka, self.similarity = cka, similarity

    def __getattr__(self, name):  # counters, names and skips are the CKA sink's
        return getattr(self.__dict__["cka"], name)

    def update(self, outputs, inputs, other, ctx: BatchContext) -> None:
        features, states = [f for f, _ in outputs], [s for _, s in outputs]
        self.similarity.update(states, inputs, None, ctx)
        self.cka.update(features, None, other, ctx)

    def result(self) -> SinkResult:
        result = self.cka.result()
        result.block_io = self.similarity.result().block_io
        return result

    def distributed_state(self) -> List[torch.Tensor]:
        return self.cka.distributed_state() + self.similarity.distributed_state()

    def distributed_counts(self) -> List[int]:
        return self.cka.distributed_counts() + self.similarity.distributed_counts()

    def distributed_load(self, tensors: List[torch.Tensor], counts: List[int]) -> None:
        k, c = len(self.cka.distributed_state()), len(self.cka.distributed_counts())
        self.cka.distributed_load(tensors[:k], counts[:c])
        self.similarity.distributed_load(tensors[k:], counts[c:])

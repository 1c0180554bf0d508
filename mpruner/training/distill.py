"""Healing by distillation from the unpruned model: ``Finetuner(distill=dict(teacher=...))``.

The loss of a token batch, over its real tokens (``attention_mask`` 1; padding excluded):

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))        (mean over real tokens)
    + (1 - alpha) * cross-entropy of the next token                       (mean over labelled tokens)
    + hidden * mean over the pairs of MSE(rms(student block), rms(teacher block))

The hidden term (optional) pairs, for each removed run of blocks, the kept block before the cut
with the teacher's last removed block (a linear replacement folds its map into that block, so its
output stands in for the run's) and the kept block after the cut with itself in the teacher;
token vectors are scaled to unit RMS first, so the residual stream's few massive dimensions do
not dominate the error.

The logits are never held whole twice: for a Hugging Face causal LM whose head is a plain linear
layer, both models run with the head passed through (they return the final hidden states) and
:class:`_FusedDistill` applies both heads and the loss row chunk by row chunk, computing the
gradient as it goes, so only one chunk of (rows, vocab) logits exists at a time. Other models
(no separable head, a soft-capped head, sharded training) return their full logits, and the loss
is taken over row chunks that are recomputed in the backward pass.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..adapters import find_blocks
from .partial import block_origins

DISTILL_KEYS = ("teacher", "temperature", "alpha", "hidden")
CHUNK_BYTES = 1 << 24  # one (rows, vocab) float32 block of logits: 16 MiB (85 rows of a 49k vocabulary)


@dataclass
class DistillSpec:
    teacher: nn.Module
    temperature: float = 2.0
    alpha: float = 1.0
    hidden: Optional[float] = None

    def recipe(self) -> Dict:
        """What a resumed healing run must repeat (the teacher is named by its class and size)."""
        size = sum(p.numel() for p in self.teacher.parameters())
        return {"teacher": f"{type(self.teacher).__name__}({size} parameters)", "temperature": self.temperature,
                "alpha": self.alpha, "hidden": self.hidden}


def check_distill(distill) -> Optional[DistillSpec]:
    """``Finetuner(distill=...)`` checked now, before any training."""
    if distill is None:
        return None
    if not isinstance(distill, dict):
        raise TypeError(f"distill must be a dict such as dict(teacher=model, temperature=2.0, alpha=1.0), got "
                        f"{type(distill).__name__}")
    unknown = sorted(set(distill) - set(DISTILL_KEYS))
    if unknown:
        raise ValueError(f"distill: unknown option(s) {unknown}; known: {', '.join(DISTILL_KEYS)}")
    teacher = distill.get("teacher")
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"distill['teacher'] must be the unpruned model (a torch.nn.Module), got "
                        f"{type(teacher).__name__}")
    temperature, alpha, hidden = distill.get("temperature", 2.0), distill.get("alpha", 1.0), distill.get("hidden")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"distill temperature must be a number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"distill alpha must be in [0, 1] (the weight of the distillation term against the "
                         f"task loss), got {alpha!r}")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, (int, float)) or hidden < 0):
        raise ValueError(f"distill hidden must be None or a weight >= 0 for the hidden-state MSE, got {hidden!r}")
    return DistillSpec(teacher, float(temperature), float(alpha), None if hidden is None else float(hidden))


def _vocab(model: nn.Module) -> Optional[int]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head.out_features
    return getattr(getattr(model, "config", None), "vocab_size", None)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_pairing(spec: DistillSpec, student: nn.Module) -> None:
    """Refuses a teacher that cannot teach this student, before the first step."""
    if spec.teacher is student:
        raise ValueError("distill['teacher'] is the model being trained itself; pass the unpruned model (e.g. the "
                         "model given to MPruner, or a copy made before pruning)")
    vt, vs = _vocab(spec.teacher), _vocab(student)
    if vt is not None and vs is not None and vt != vs:
        raise ValueError(f"distill['teacher'] predicts {vt} tokens but the student {vs}: distillation compares "
                         "their next-token distributions, so both need the same tokenizer and vocabulary")
    if _device(spec.teacher) != _device(student):
        raise ValueError(f"distill['teacher'] is on {_device(spec.teacher)} but the student on {_device(student)}; "
                         f"move the teacher there first (teacher.to('{_device(student)}'))")


def fused_head(model: nn.Module) -> Optional[nn.Linear]:
    """The output layer a loss can apply itself: a Hugging Face causal LM's linear head without
    logit soft-capping; None for other models."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear) or getattr(getattr(model, "config", None), "final_logit_softcapping", None):
        return None
    return head


@contextlib.contextmanager
def head_passed_through(*heads: Optional[nn.Linear]):
    """The models return the hidden states their heads would read, instead of logits."""
    patched = [h for h in heads if h is not None]
    try:
        for head in patched:
            head.forward = _identity
        yield
    finally:
        for head in patched:
            vars(head).pop("forward", None)


def _identity(x):
    return x


def _dtypes(hs: torch.Tensor) -> Tuple[torch.dtype, torch.dtype]:
    """(the heads' GEMM dtype: autocast's when it is on; the softmax dtype: float32, or float64 for
    float64 models)."""
    acc = torch.float64 if hs.dtype == torch.float64 else torch.float32
    if torch.is_autocast_enabled(hs.device.type):
        return torch.get_autocast_dtype(hs.device.type), acc
    return acc, acc


def _chunk_rows(vocab: int) -> int:
    return max(16, CHUNK_BYTES // (4 * max(1, vocab)))


class _FusedDistill(torch.autograd.Function):
    """Both heads and the loss, row chunk by row chunk; the gradients are computed on the way."""

    @staticmethod
    def forward(ctx, hs, weight, bias, ht, t_weight, t_bias, labels, temperature, alpha, n, ce_rows):
        # n, ce_rows: what the sums are divided by (the whole batch's counts when this is a share)
        mm, acc = _dtypes(hs)
        with torch.autocast(hs.device.type, enabled=False):
            w, tw = weight.to(mm), t_weight.to(mm)
            b = None if bias is None else bias.to(mm)
            tb = None if t_bias is None else t_bias.to(mm)
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            need_b = bias is not None and ctx.needs_input_grad[2]
            grad_h = torch.zeros_like(hs) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=acc, device=hs.device) if need_w else None
            grad_b = torch.zeros(weight.shape[0], dtype=acc, device=hs.device) if need_b else None
            kd_sum = torch.zeros((), dtype=torch.float64, device=hs.device)
            ce_sum = torch.zeros((), dtype=torch.float64, device=hs.device)
            rows = _chunk_rows(weight.shape[0])
            for start in range(0, hs.shape[0], rows):
                part = slice(start, min(hs.shape[0], start + rows))
                h = hs[part].to(mm)
                s = F.linear(h, w, b).to(acc)
                grad = None
                if alpha > 0:
                    t = F.linear(ht[part].to(mm), tw, tb).to(acc)
                    log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
                    p_t = log_t.exp()
                    kd_sum += (p_t * (log_t - log_s)).sum().double()
                    # d(alpha T^2 KL / n)/ds = alpha T (softmax(s/T) - softmax(t/T)) / n
                    grad = (alpha * temperature / n) * (log_s.exp() - p_t)
                    del t, log_s, log_t, p_t
                if alpha < 1 and ce_rows:
                    lab = labels[part]
                    valid = lab >= 0
                    log_p = F.log_softmax(s, -1)
                    picked = log_p.gather(1, lab.clamp_min(0)[:, None])[:, 0]
                    ce_sum -= picked[valid].sum().double()
                    g = log_p.exp()
                    g[valid, lab[valid]] -= 1
                    g[~valid] = 0
                    g *= (1 - alpha) / ce_rows
                    grad = g if grad is None else grad + g
                    del log_p, g
                if grad is not None:
                    if need_h:
                        grad_h[part] = (grad.to(mm) @ w).to(hs.dtype)
                    if need_w:
                        grad_w += (grad.to(mm).T @ h).to(acc)
                    if need_b:
                        grad_b += grad.sum(0)
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.present = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        loss = alpha * temperature ** 2 * kd_sum / max(n, 1)
        if alpha < 1 and ce_rows:
            loss = loss + (1 - alpha) * ce_sum / ce_rows
        return loss.to(acc)

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        grads = [saved.pop(0) * grad_out if present else None for present in ctx.present]
        if grads[1] is not None:
            grads[1] = grads[1].to(ctx.dtypes[0])
        if grads[2] is not None:
            grads[2] = grads[2].to(ctx.dtypes[1])
        return grads[0], grads[1], grads[2], None, None, None, None, None, None, None, None


def _chunk_loss(s, t, labels, temperature: float, alpha: float, n: int, ce_rows: int):
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    s = s.to(acc)
    loss = s.new_zeros(())
    if alpha > 0:
        log_s, log_t = F.log_softmax(s / temperature, -1), F.log_softmax(t.to(acc) / temperature, -1)
        loss = loss + alpha * temperature ** 2 * (log_t.exp() * (log_t - log_s)).sum() / n
    if alpha < 1 and ce_rows:
        loss = loss + (1 - alpha) * F.cross_entropy(s, labels, ignore_index=-100, reduction="sum") / ce_rows
    return loss


def logits_loss(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float,
                n: int, ce_rows: int):
    """The same loss on full (rows, vocab) logits, over row chunks recomputed in the backward pass
    (so their softmaxes are not all kept for it)."""
    rows = _chunk_rows(s.shape[-1])
    total = s.new_zeros((), dtype=torch.float64 if s.dtype == torch.float64 else torch.float32)
    for start in range(0, s.shape[0], rows):
        part = slice(start, min(s.shape[0], start + rows))
        total = total + checkpoint(_chunk_loss, s[part], t[part], labels[part], temperature, alpha, n, ce_rows,
                                   use_reentrant=False)
    return total


def hidden_pairs(student: nn.Module, teacher: nn.Module) -> List[Tuple[int, int]]:
    """(student block, teacher block) pairs around each cut (see the module docstring)."""
    origins = block_origins(student)
    if origins is None:
        raise ValueError("distill hidden= compares the blocks around each cut, but this model carries no record of "
                         "removed blocks (mpruner.remove_layers / linear_replacement write it); drop hidden")
    name, kept, original = origins
    teacher_blocks = next((bl for bl in find_blocks(teacher) if bl.name == name), None)
    if teacher_blocks is None or len(teacher_blocks) != original:
        raise ValueError(f"distill hidden=: the student was cut from a model with {original} blocks in {name!r}, "
                         f"but the teacher has {len(teacher_blocks) if teacher_blocks else 'no such list'}; pass "
                         "the unpruned model as the teacher")
    pairs = set()
    for j in range(len(kept)):
        after = kept[j + 1] if j + 1 < len(kept) else original
        if after > kept[j] + 1:             # a cut after student block j
            pairs.add((j, after - 1))       # j stands in for the run: the teacher's last removed block
            if j + 1 < len(kept):
                pairs.add((j + 1, kept[j + 1]))
    if kept and kept[0] > 0:                # blocks removed at the start
        pairs.add((0, kept[0]))
    return sorted(pairs)


class _Outputs:
    """The first tensor each hooked block returns, by position in the list."""

    def __init__(self, blocks: Sequence[nn.Module]):
        self.seen: Dict[int, torch.Tensor] = {}
        self.handles = [b.register_forward_hook(lambda m, a, out, i=i: self.seen.__setitem__(
            i, out if isinstance(out, torch.Tensor) else out[0])) for i, b in enumerate(blocks)]

    def close(self):
        for h in self.handles:
            h.remove()


def _rms(x):
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).clamp_min(1e-12))


class Distiller:
    """The distillation loss of one Finetuner call: ``distiller(wrapped, batch) -> loss``.

    ``student`` is the plain model being healed (checked against the teacher, its removal record
    read); ``running`` the module whose forward runs (the same model, its LoRA wrapper, or a
    sharded copy, where only the full-logits path applies: ``fused=False``).
    """

    def __init__(self, spec: DistillSpec, student: nn.Module, running: nn.Module, fused: bool):
        check_pairing(spec, student)
        self.spec, self.teacher = spec, spec.teacher
        self.s_head = fused_head(student) if fused else None
        self.t_head = fused_head(self.teacher) if self.s_head is not None else None
        if self.t_head is None:
            self.s_head = None  # both fused or neither
        self.pairs: List[Tuple[int, int]] = []
        self._s_out = self._t_out = None
        if spec.hidden:
            self.pairs = hidden_pairs(student, self.teacher)
            name = block_origins(student)[0]
            s_blocks = next(bl for bl in find_blocks(running if not fused else student) if bl.name == name)
            t_blocks = next(bl for bl in find_blocks(self.teacher) if bl.name == name)
            self._s_out = _Outputs([m for _, m in s_blocks])
            self._t_out = _Outputs([m for _, m in t_blocks])
        self._teacher_mode = self.teacher.training
        self.teacher.eval()

    def close(self) -> None:
        for outputs in (self._s_out, self._t_out):
            if outputs is not None:
                outputs.close()
        self.teacher.train(self._teacher_mode)

    @staticmethod
    def _rows(batch):
        """(B, T) real tokens, and each real token's next-token label (-100: none) as a flat tensor."""
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise TypeError("distillation needs token batches: dicts with 'input_ids' (and 'attention_mask', "
                            "'labels'), e.g. mpruner.data.lm_batches")
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        labels = batch.get("labels")
        labels = ids if labels is None else labels
        # The label of position t is the token at t + 1 (as the model's own loss shifts them).
        nxt = torch.full_like(labels, -100)
        nxt[:, :-1] = labels[:, 1:]
        return real, torch.where(real, nxt, torch.full_like(nxt, -100))[real]

    def totals(self, batch) -> Tuple[int, int]:
        """(real tokens, labelled real tokens) of a whole batch: what each share's loss is divided by,
        so that the ranks' shares of a batch add up to the whole batch's mean exactly."""
        real, nxt = self._rows(batch)
        return int(real.sum()), int((nxt >= 0).sum())

    def __call__(self, wrapped: nn.Module, batch, totals: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        real, nxt = self._rows(batch)
        n, ce_rows = totals if totals is not None else (int(real.sum()), int((nxt >= 0).sum()))
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        inputs = {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
        spec = self.spec
        with head_passed_through(self.s_head, self.t_head):
            with torch.no_grad():
                t_out = self.teacher(**inputs)
            s_out = wrapped(**inputs)
        s, t = _logits(s_out)[real], _logits(t_out)[real]
        if self.s_head is not None:
            loss = _FusedDistill.apply(s, self.s_head.weight, self.s_head.bias, t, self.t_head.weight,
                                       self.t_head.bias, nxt, spec.temperature, spec.alpha, n, ce_rows)
        else:
            loss = logits_loss(s, t, nxt, spec.temperature, spec.alpha, n, ce_rows)
        if self.pairs:
            loss = loss + spec.hidden * self._hidden_mse(real, n)
        return loss

    def _hidden_mse(self, real: torch.Tensor, n: int) -> torch.Tensor:
        errors = [(_rms(self._s_out.seen[j][real]) - _rms(self._t_out.seen[k][real])).pow(2).sum()
                  / (n * self._s_out.seen[j].shape[-1]) for j, k in self.pairs]
        self._s_out.seen.clear()
        self._t_out.seen.clear()
        return torch.stack(errors).mean()


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    logits = out["logits"] if isinstance(out, dict) else getattr(out, "logits", None)
    if logits is None:
        raise TypeError(f"distillation reads the models' logits, but got a {type(out).__name__} without them")
    return logits

"""Recovery fine-tuning after layers are removed."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def default_loss(model: nn.Module, batch, loss_fn: Optional[Callable] = None) -> torch.Tensor:
    """Hugging Face batches (dicts with ``labels``) use the model's own loss; ``(x, y)``
    batches use ``loss_fn(outputs, y)`` (cross-entropy by default)."""
    if isinstance(batch, dict):
        out = model(**batch)
        if loss_fn is not None:
            return loss_fn(out, batch.get("labels"))
        loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
        if loss is None:
            raise ValueError("the model returned no loss for a dict batch: include 'labels' in the batch or pass "
                             "loss_fn=lambda outputs, labels: ...")
        return loss
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        out = model(batch[0])
        logits = getattr(out, "logits", out)
        return (loss_fn or F.cross_entropy)(logits, batch[1])
    raise TypeError(f"cannot derive a loss from a batch of type {type(batch).__name__}: use dict batches with "
                    "'labels', (inputs, targets) tuples, or pass loss_fn")


class Finetuner:
    """AdamW with linear warm-up and decay, gradient clipping and a progress bar.

    ``Finetuner(train_data)(model)`` trains ``model`` in place. Works for Hugging Face
    models (dict batches with ``labels``: the model's loss) and plain classifiers
    (``(inputs, targets)`` batches: cross-entropy, or ``loss_fn(outputs, targets)``).

    Args:
        train_data: re-iterable batches (a DataLoader or a list).
        epochs: passes over ``train_data``; ``max_steps`` caps the optimizer steps.
        lr, weight_decay, warmup: AdamW learning rate, decay, warm-up fraction of steps.
        max_grad_norm: gradient clipping.
        amp: ``"auto"`` (bfloat16 autocast on CUDA, off on CPU), True or False.
        seed: seeds the RNG before training, so a resumed run repeats the same steps.
        lora: LoRA healing through ``peft`` (``pip install 'mpruner[lm]'``), e.g.
            ``dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"])``: only the adapters
            train, and they are merged into the weights afterwards (``merge_and_unload``), so
            the model stays a plain model that saves and reloads as before.
    """

    def __init__(self, train_data: Iterable, epochs: int = 1, lr: float = 5e-5, max_steps: Optional[int] = None,
                 loss_fn: Optional[Callable] = None, amp="auto", weight_decay: float = 0.01, warmup: float = 0.1,
                 max_grad_norm: float = 1.0, seed: Optional[int] = 0, progress: bool = True,
                 lora: Optional[dict] = None):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.train_data, self.epochs, self.lr, self.max_steps = train_data, epochs, lr, max_steps
        self.loss_fn, self.amp, self.weight_decay, self.warmup = loss_fn, amp, weight_decay, warmup
        self.max_grad_norm, self.seed, self.progress = max_grad_norm, seed, progress
        self.lora = None
        if lora is not None:
            from ..lm.lora import _peft, check_lora_options

            check_lora_options(lora)
            _peft()  # a missing peft is reported now, not after the first removal
            self.lora = dict(lora)

    def _total_steps(self) -> Optional[int]:
        try:
            per_epoch = len(self.train_data)
        except TypeError:
            return self.max_steps
        total = per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def __call__(self, model: nn.Module) -> float:
        """Trains in place; returns the mean training loss of the last epoch."""
        if self.lora is None:
            return self._train(model)
        from ..lm.lora import merge_lora, wrap_lora

        if self.seed is not None:
            torch.manual_seed(self.seed)  # the adapters' initialisation is seeded too
        wrapped, saved = wrap_lora(model, **self.lora)
        try:
            return self._train(wrapped)
        finally:
            merge_lora(wrapped, saved)  # also after an error: the model is left plain

    def _train(self, model: nn.Module) -> float:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        device = _model_device(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self._total_steps()
        warm = max(1, int(self.warmup * total)) if total else 0

        def factor(step):
            if not total:
                return 1.0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        use_amp = (device.type == "cuda") if self.amp == "auto" else bool(self.amp)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="fine-tune", leave=False, dynamic_ncols=True)
        was_training = model.training
        model.train()
        step, last_mean = 0, math.nan
        try:
            for _ in range(self.epochs):
                losses = []
                for batch in self.train_data:
                    batch = _to(batch, device)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = default_loss(model, batch, self.loss_fn)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"fine-tuning loss became {loss.item()} at step {step}; lower lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                    step += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    if self.max_steps and step >= self.max_steps:
                        break
                last_mean = sum(losses) / max(1, len(losses))
                if self.max_steps and step >= self.max_steps:
                    break
        finally:
            if bar is not None:
                bar.close()
            model.train(was_training)
        return last_mean

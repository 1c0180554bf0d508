"""Recovery fine-tuning after layers are removed."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accelerated import MIXED_PRECISIONS, check_world, make_accelerator, mixed_precision, release
from .batch_split import split_batch
from .sharded import ShardedDriver, check_fsdp_options, gather_into, shard_copy


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
    """AdamW with linear warm-up and decay, gradient clipping and a progress bar, on ``accelerate``.

    ``Finetuner(train_data)(model)`` trains ``model`` in place. Works for Hugging Face
    models (dict batches with ``labels``: the model's loss) and plain classifiers
    (``(inputs, targets)`` batches: cross-entropy, or ``loss_fn(outputs, targets)``).

    The step runs on an ``accelerate.Accelerator``: one CPU or GPU, or, under torchrun /
    ``accelerate launch``, data-parallel (DDP) over all ranks. Every rank reads the same
    batches and trains on its share of each (``mpruner.training.batch_split``), so W ranks
    with per-rank batch b take the step one process takes with batch W * b, and the model
    is the same on every rank afterwards (dropout masks aside). With ``fsdp=True`` the
    same steps run fully sharded (torch FSDP2, ``mpruner.training.sharded``): parameters,
    gradients and optimizer state split over the ranks, on CPUs (gloo) or GPUs (NCCL).

    Args:
        train_data: re-iterable batches (a DataLoader or a list).
        epochs: passes over ``train_data``; ``max_steps`` caps the optimizer steps.
        lr, weight_decay, warmup: AdamW learning rate, decay, warm-up fraction of steps.
        max_grad_norm: gradient clipping.
        amp: ``"auto"`` (bfloat16 autocast on CUDA, off on CPU), True (bfloat16), False, or an
            ``accelerate`` mixed-precision name (``"bf16"``, ``"fp16"``, ``"no"``).
        seed: seeds the RNG before training, so a resumed run repeats the same steps.
        gradient_accumulation_steps: batches per optimizer step (their mean loss; the last
            group of an epoch may be shorter).
        accelerator: an ``accelerate.Accelerator`` to train with (e.g. with your own DDP
            options); default: one made per call (mixed precision from ``amp``, on the CPU
            when the model is there). accelerate's own FSDP and DeepSpeed configurations
            are refused (they rewrite the model the loop keeps working on): use ``fsdp=``.
        fsdp: True, or a dict with ``wrap`` (``"blocks"``: one FSDP unit per block of the
            model's block lists, the default; ``"root"``; or a list of module classes) and
            ``reshard_after_forward`` (default True). Each call shards a copy of the model
            over the initialised process group (torchrun), trains it and gathers the
            trained weights back into the model; if training fails the model is unchanged.
            Default None: no sharding.
        lora: LoRA healing through ``peft`` (``pip install 'mpruner[lm]'``), e.g.
            ``dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"])``: only the adapters
            train, and they are merged into the weights afterwards (``merge_and_unload``), so
            the model stays a plain model that saves and reloads as before.
    """

    def __init__(self, train_data: Iterable, epochs: int = 1, lr: float = 5e-5, max_steps: Optional[int] = None,
                 loss_fn: Optional[Callable] = None, amp="auto", weight_decay: float = 0.01, warmup: float = 0.1,
                 max_grad_norm: float = 1.0, seed: Optional[int] = 0, progress: bool = True, *,
                 gradient_accumulation_steps: int = 1, accelerator=None, lora: Optional[dict] = None,
                 fsdp=None):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        if isinstance(gradient_accumulation_steps, bool) or not isinstance(gradient_accumulation_steps, int) \
                or gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be an integer >= 1, got {gradient_accumulation_steps!r}")
        if amp not in ("auto", True, False) and amp not in MIXED_PRECISIONS:
            raise ValueError(f"amp must be 'auto', True, False or one of {MIXED_PRECISIONS}, got {amp!r}")
        self.train_data, self.epochs, self.lr, self.max_steps = train_data, epochs, lr, max_steps
        self.loss_fn, self.amp, self.weight_decay, self.warmup = loss_fn, amp, weight_decay, warmup
        self.max_grad_norm, self.seed, self.progress = max_grad_norm, seed, progress
        self.gradient_accumulation_steps, self.accelerator = gradient_accumulation_steps, accelerator
        self.fsdp = check_fsdp_options(fsdp)
        if self.fsdp is not None and accelerator is not None:
            raise ValueError("pass either fsdp= (mpruner shards the model with torch FSDP2) or accelerator=, not both")
        if self.fsdp is not None and lora is not None:
            raise ValueError("fsdp= with lora= is not supported: LoRA trains only the small adapters, whose "
                             "gradients and optimizer state need no sharding; drop fsdp= (DDP) for LoRA healing")
        self.lora = None
        if lora is not None:
            from .lora import check_lora_options, require_peft

            check_lora_options(lora)
            require_peft()  # a missing peft is reported now, not after the first removal
            self.lora = dict(lora)

    def _total_steps(self) -> Optional[int]:
        try:
            per_epoch = len(self.train_data)
        except TypeError:
            return self.max_steps
        total = math.ceil(per_epoch / self.gradient_accumulation_steps) * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def __call__(self, model: nn.Module) -> float:
        """Trains in place; returns the mean training loss of the last epoch."""
        if self.lora is None:
            return self._train(model)
        from .lora import merge_lora, wrap_lora

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
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters")
        device = _model_device(model)
        if self.fsdp is not None:
            accelerator = ShardedDriver(device, mixed_precision(self.amp, device))
            trained = shard_copy(model, self.fsdp)  # the model itself stays plain
        else:
            accelerator = self.accelerator or make_accelerator(device, self.amp)
            check_world(accelerator)
            trained = model
        params = [p for p in trained.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self._total_steps()
        warm = max(1, int(self.warmup * total)) if total else 0

        def factor(step):
            if not total:
                return 1.0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        # The scheduler is stepped here once per optimizer step, whatever the number of ranks.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        bar = None
        if self.progress and accelerator.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="fine-tune", leave=False, dynamic_ncols=True)
        was_training = model.training
        wrapped, opt = accelerator.prepare(trained, opt)
        wrapped.train()
        step, last_mean = 0, math.nan
        try:
            for _ in range(self.epochs):
                losses = []
                for group in _groups(self.train_data, self.gradient_accumulation_steps):
                    losses.extend(self._step(accelerator, wrapped, opt, params, group, step))
                    sched.step()
                    step += 1
                    if bar is not None:
                        # postfix without its own refresh: one redraw per step (a log shows each step once)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                        bar.update(1)
                    if self.max_steps and step >= self.max_steps:
                        break
                last_mean = sum(losses) / max(1, len(losses))
                if self.max_steps and step >= self.max_steps:
                    break
        finally:
            if bar is not None:
                bar.close()
            if self.fsdp is None:
                release(accelerator, model)
            model.train(was_training)
        if self.fsdp is not None:
            gather_into(trained, model)  # only after success: a failed sharded run leaves the model as it was
        return last_mean

    def _step(self, accelerator, wrapped: nn.Module, opt, params, group, step: int):
        """One optimizer step over a group of batches; returns each batch's loss over all ranks."""
        rank, world = accelerator.process_index, accelerator.num_processes
        opt.zero_grad(set_to_none=True)
        losses = []
        for i, batch in enumerate(group):
            part, weight = split_batch(batch, rank, world)
            part = _to(part, accelerator.device)
            # Gradients are all-reduced on the group's last batch only.
            sync = contextlib.nullcontext() if i == len(group) - 1 else accelerator.no_sync(wrapped)
            with sync:
                with accelerator.autocast():
                    loss = default_loss(wrapped, part, self.loss_fn)
                # The whole batch's loss on every rank: the same finite check everywhere.
                whole = accelerator.reduce(loss.detach().double() * (weight / world), "sum") if world > 1 else loss
                if not torch.isfinite(whole):
                    raise FloatingPointError(f"fine-tuning loss became {whole.item()} at step {step}; lower lr")
                accelerator.backward(loss * (weight / len(group)))
            losses.append(whole.item())
        accelerator.clip_grad_norm_(params, self.max_grad_norm)
        opt.step()
        return losses


def _groups(batches: Iterable, size: int):
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group

"""Recovery fine-tuning after layers are removed."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .accelerated import MIXED_PRECISIONS, check_world, make_accelerator, mixed_precision, release
from .batch_split import split_batch
from .budget import Meter, group_tokens, parse_tokens, step_groups, with_last
from .distill import Distiller, check_distill, check_pairing
from .healing_state import HealingState, current, fingerprint, interrupt_between_steps
from .partial import check_train, only_trainable
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
        amp: ``"auto"`` (bfloat16 autocast on CUDA and on CPUs with a bfloat16 matrix engine,
            AMX-BF16 or AVX512-BF16, where it trains faster; float32 on other CPUs, which only
            emulate bfloat16), True (bfloat16), False, or an ``accelerate`` mixed-precision name
            (``"bf16"``, ``"fp16"``, ``"no"``).
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
        train: what trains (:mod:`mpruner.training.partial`): ``"all"`` (default; ``"lora"``
            when ``lora`` is given), ``"lora"``, ``"around-cuts"`` (the kept blocks next to each
            removed run, plus every norm) or ``"last:K"`` (the last K blocks, the final norm and
            the LM head). The others are frozen and stay bitwise unchanged.
        freeze_embeddings: also freeze the input and output embeddings.
        distill: distillation from the unpruned model (:mod:`mpruner.training.distill`):
            ``dict(teacher=model, temperature=2.0, alpha=1.0, hidden=None)``; the loss is
            ``alpha * T^2 * KL(teacher || student)`` over real tokens plus ``(1 - alpha)`` times
            the next-token loss, plus ``hidden`` times the MSE of RMS-normalized hidden states
            at the blocks around each cut. The teacher runs frozen, in eval mode, under
            ``no_grad``, on the student's device; token batches only (``mpruner.data.lm_batches``).
        max_tokens: a healing budget in real tokens (``attention_mask`` ones; an int or a
            string such as ``"300k"``): training stops after the step that reaches it; the
            schedule spans it and the bar shows tokens/s and the ETA.
        checkpoint_dir, checkpoint_every: write the healing state to ``checkpoint_dir`` at most
            every ``checkpoint_every`` seconds (default 300), so a killed call resumes from it,
            losing at most that (:mod:`mpruner.training.healing_state`); inside ``MPruner`` with
            a ``checkpoint_dir`` this happens by itself.
        eval_every, eval_fn: call ``eval_fn(model)`` (in eval mode, without gradients) every
            ``eval_every`` training tokens; ``self.curve`` then lists ``{"tokens", "step",
            "loss", "metric"}`` (e.g. held-out perplexity against healing tokens).
    """

    def __init__(self, train_data: Iterable, epochs: int = 1, lr: float = 5e-5, max_steps: Optional[int] = None,
                 loss_fn: Optional[Callable] = None, amp="auto", weight_decay: float = 0.01, warmup: float = 0.1,
                 max_grad_norm: float = 1.0, seed: Optional[int] = 0, progress: bool = True, *,
                 gradient_accumulation_steps: int = 1, accelerator=None, lora: Optional[dict] = None,
                 fsdp=None, train: Optional[str] = None, freeze_embeddings: bool = False, distill=None,
                 max_tokens=None, checkpoint_dir=None, checkpoint_every: float = 300.0,
                 eval_every: Optional[int] = None, eval_fn: Optional[Callable] = None):
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
        self.train = check_train(train if train is not None else ("lora" if lora is not None else "all"))
        if self.train != "lora" and lora is not None:
            raise ValueError(f"lora= options go with train='lora', got train={self.train!r}; drop one of them")
        if self.fsdp is not None and self.train == "lora":
            raise ValueError("fsdp= with lora= is not supported: LoRA trains only the small adapters, whose "
                             "gradients and optimizer state need no sharding; drop fsdp= (DDP) for LoRA healing")
        if not isinstance(freeze_embeddings, bool):
            raise TypeError(f"freeze_embeddings must be True or False, got {freeze_embeddings!r}")
        self.freeze_embeddings = freeze_embeddings
        self.lora = None
        if self.train == "lora":
            from .lora import check_lora_options, require_peft

            check_lora_options(lora or {})
            require_peft()  # a missing peft is reported now, not after the first removal
            self.lora = dict(lora or {})
        self.distill = check_distill(distill)
        if self.distill is not None and loss_fn is not None:
            raise ValueError("distill= computes the loss itself (distillation plus (1 - alpha) x the next-token "
                             "loss); drop loss_fn")
        self.max_tokens = None if max_tokens is None else parse_tokens(max_tokens)
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, float)) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be a number of seconds >= 0, got {checkpoint_every!r}")
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, float(checkpoint_every)
        if checkpoint_dir is not None and self.fsdp is not None:
            raise ValueError("checkpoint_dir= with fsdp= is not supported (the healing state would be sharded); "
                             "drop one of them")
        if (eval_every is None) != (eval_fn is None):
            raise ValueError("eval_every (tokens) and eval_fn (a callable eval_fn(model) -> float) go together")
        if eval_every is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, int)
                                       or eval_every < 1):
            raise ValueError(f"eval_every must be a number of tokens >= 1, got {eval_every!r}")
        if eval_fn is not None and not callable(eval_fn):
            raise TypeError("eval_fn must be a callable eval_fn(model) -> float")
        self.eval_every, self.eval_fn = eval_every, eval_fn
        self.curve: List[dict] = []

    def recipe(self) -> dict:
        """The options a resumed healing run must repeat (recorded in its checkpoint)."""
        out = {"epochs": self.epochs, "lr": self.lr, "max_steps": self.max_steps, "amp": self.amp,
               "weight_decay": self.weight_decay, "warmup": self.warmup, "max_grad_norm": self.max_grad_norm,
               "seed": self.seed, "gradient_accumulation_steps": self.gradient_accumulation_steps,
               "train": self.train, "lora": self.lora, "freeze_embeddings": self.freeze_embeddings,
               "max_tokens": self.max_tokens}
        if self.distill is not None:
            out["distill"] = self.distill.recipe()
        return out

    def _total_steps(self, first_group_tokens: Optional[int] = None) -> Optional[int]:
        try:
            per_epoch = len(self.train_data)
        except TypeError:
            per_epoch = None
        total = None if per_epoch is None else math.ceil(per_epoch / self.gradient_accumulation_steps) * self.epochs
        if self.max_tokens is not None and first_group_tokens:
            by_tokens = math.ceil(self.max_tokens / first_group_tokens)  # the schedule spans the budget
            total = by_tokens if total is None else min(total, by_tokens)
        if self.max_steps:
            total = self.max_steps if total is None else min(total, self.max_steps)
        return total

    def __call__(self, model: nn.Module) -> float:
        """Trains in place; returns the mean training loss of the last epoch."""
        if self.distill is not None:
            check_pairing(self.distill, model)  # before anything is wrapped
        if self.lora is None:
            with only_trainable(model, self.train, self.freeze_embeddings):
                return self._train(model, model)
        from .lora import merge_lora, wrap_lora

        if self.seed is not None:
            torch.manual_seed(self.seed)  # the adapters' initialisation is seeded too
        wrapped, saved = wrap_lora(model, **self.lora)
        try:
            return self._train(wrapped, model)
        finally:
            merge_lora(wrapped, saved)  # also after an error: the model is left plain

    def _first_group(self):
        return next(iter(step_groups(self.train_data, self.gradient_accumulation_steps)), None)

    def _healing_state(self, plain: nn.Module, is_main: bool) -> Optional[HealingState]:
        where = (self.checkpoint_dir, "") if self.checkpoint_dir is not None else current()
        if where is None:
            return None
        return HealingState(where[0], f"{where[1]}|{fingerprint(plain)}", self.recipe(), self.checkpoint_every,
                            writer=is_main)

    def _train(self, model: nn.Module, plain: nn.Module) -> float:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters")
        first = self._first_group()
        first_tokens = group_tokens(first) if first else None
        if self.max_tokens is not None:
            if first is None or first_tokens is None:
                raise ValueError("max_tokens counts real tokens: it needs token batches (dicts with 'input_ids' and "
                                 "'attention_mask', e.g. mpruner.data.lm_batches)")
            if self.max_tokens < first_tokens:
                raise ValueError(f"max_tokens={self.max_tokens} is below one optimizer step's {first_tokens} tokens; "
                                 "raise it or use smaller batches")
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
        total = self._total_steps(first_tokens)
        warm = max(1, int(self.warmup * total)) if total else 0

        def factor(step):
            if not total:
                return 1.0
            if step < warm:
                return (step + 1) / warm
            return max(0.0, (total - step) / max(1, total - warm))

        # The scheduler is stepped here once per optimizer step, whatever the number of ranks.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        state = self._healing_state(plain, accelerator.is_main_process)
        saved = state.load() if state is not None else None
        distiller = None
        was_training = model.training
        self.curve = []
        meter = None
        try:
            if self.distill is not None:
                distiller = Distiller(self.distill, plain, trained, fused=self.fsdp is None)
            compute_loss = distiller if distiller is not None else (
                lambda m, batch: default_loss(m, batch, self.loss_fn))
            wrapped, opt = accelerator.prepare(trained, opt)
            progress = {"step": 0, "tokens": 0, "epoch": 0, "groups": 0, "losses": [], "curve": []}
            if saved is not None:
                progress = state.restore(saved, trained, opt, sched)
                self.curve = list(progress["curve"])
            wrapped.train()
            meter = Meter(self.progress and accelerator.is_main_process, total, self.max_tokens,
                          progress["step"], progress["tokens"])
            with interrupt_between_steps(state is not None) as interrupted:
                last_mean = self._epochs(accelerator, wrapped, trained, opt, sched, params, compute_loss, progress,
                                         meter, state, interrupted)
        finally:
            if meter is not None:
                meter.close()
            if distiller is not None:
                distiller.close()
            if self.fsdp is None:
                release(accelerator, model)
            model.train(was_training)
        if self.fsdp is not None:
            gather_into(trained, model)  # only after success: a failed sharded run leaves the model as it was
        if state is not None:
            state.clear()
        return last_mean

    def _done(self, progress) -> bool:
        return bool((self.max_steps and progress["step"] >= self.max_steps)
                    or (self.max_tokens is not None and progress["tokens"] >= self.max_tokens))

    def _epochs(self, accelerator, wrapped, trained, opt, sched, params, compute_loss, progress, meter, state,
                interrupted):
        last_mean = math.nan
        while progress["epoch"] < self.epochs and not self._done(progress):
            for index, (group, last_group) in enumerate(with_last(step_groups(self.train_data,
                                                                        self.gradient_accumulation_steps))):
                if index < progress["groups"]:
                    continue  # consumed before the run was interrupted
                progress["losses"].extend(self._step(accelerator, wrapped, opt, params, group, progress["step"],
                                                     compute_loss))
                sched.step()
                tokens = group_tokens(group)
                progress["step"] += 1
                progress["groups"] = index + 1
                progress["tokens"] += tokens or 0
                meter.step(tokens, progress["losses"][-1])
                self._watch(trained, progress, tokens)
                if self._done(progress):
                    break
                final = last_group and progress["epoch"] + 1 >= self.epochs  # its state would be removed at once
                if state is not None and (interrupted() or (not final and state.due())):
                    progress["curve"] = list(self.curve)
                    state.save(trained, opt, sched, progress)
                if interrupted():
                    raise KeyboardInterrupt(f"healing interrupted after step {progress['step']}; its state is in "
                                            f"{state.path}")
            last_mean = sum(progress["losses"]) / max(1, len(progress["losses"]))
            if self._done(progress):
                break
            progress.update(epoch=progress["epoch"] + 1, groups=0, losses=[])
        return last_mean

    def _watch(self, trained: nn.Module, progress, tokens: Optional[int]) -> None:
        """``eval_fn`` each time the tokens pass a multiple of ``eval_every``."""
        if self.eval_every is None or not tokens:
            return
        if progress["tokens"] // self.eval_every == (progress["tokens"] - tokens) // self.eval_every:
            return
        trained.eval()
        try:
            with torch.no_grad():
                metric = float(self.eval_fn(trained))
        finally:
            trained.train()
        self.curve.append({"tokens": progress["tokens"], "step": progress["step"], "loss": progress["losses"][-1],
                           "metric": metric})

    def _step(self, accelerator, wrapped: nn.Module, opt, params, group, step: int, compute_loss):
        """One optimizer step over a group of batches; returns each batch's loss over all ranks."""
        rank, world = accelerator.process_index, accelerator.num_processes
        opt.zero_grad(set_to_none=True)
        losses = []
        for i, batch in enumerate(group):
            part, weight = split_batch(batch, rank, world)
            # A per-token loss (distillation) divides each share's sums by the whole batch's token
            # counts: the shares then add up to the whole batch's mean, padding or not.
            totals = compute_loss.totals(batch) if hasattr(compute_loss, "totals") else None
            if totals is not None and weight > 0:
                weight = float(world)
            part = _to(part, accelerator.device)
            # Gradients are all-reduced on the group's last batch only.
            sync = contextlib.nullcontext() if i == len(group) - 1 else accelerator.no_sync(wrapped)
            with sync:
                with accelerator.autocast():
                    loss = compute_loss(wrapped, part) if totals is None else compute_loss(wrapped, part, totals)
                # The whole batch's loss on every rank: the same finite check everywhere.
                whole = accelerator.reduce(loss.detach().double() * (weight / world), "sum") if world > 1 else loss
                if not torch.isfinite(whole):
                    raise FloatingPointError(f"fine-tuning loss became {whole.item()} at step {step}; lower lr")
                accelerator.backward(loss * (weight / len(group)))
            losses.append(whole.item())
        accelerator.clip_grad_norm_(params, self.max_grad_norm)
        opt.step()
        return losses

"""The ``accelerate.Accelerator`` behind :class:`mpruner.Finetuner`, and what it leaves behind.

accelerate decides from the launcher's environment (torchrun, ``accelerate launch``) whether
training is one process or DDP (its FSDP and DeepSpeed modes are refused; sharded training is
``mpruner.training.sharded``); this module only picks the mixed precision and the device from the
Finetuner's defaults and undoes what ``prepare`` did to the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..hardware import bf16_matrix_engine

MIXED_PRECISIONS = ("no", "bf16", "fp16")


def mixed_precision(amp, device: torch.device) -> str:
    """``amp`` of the Finetuner as accelerate's ``mixed_precision``. ``"auto"`` is bf16 on CUDA and on
    a CPU with a bfloat16 matrix engine (AMX-BF16, AVX512-BF16: there bf16 autocast trains faster);
    float32 on other CPUs, where bfloat16 is emulated and slower."""
    if amp == "auto":
        if device.type == "cuda":
            return "bf16"
        return "bf16" if device.type == "cpu" and bf16_matrix_engine() is not None else "no"
    if amp is True:
        return "bf16"
    if amp is False:
        return "no"
    return amp


def make_accelerator(device: torch.device, amp):
    """An Accelerator for a model on ``device``: on the CPU when the model is there (the model
    is never moved to a GPU it was not on); on this rank's GPU otherwise."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = mixed_precision(amp, device)
    cpu = device.type == "cpu"
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != precision or (cpu and state["device"].type != "cpu")):
        # accelerate keeps one state per process; a later fine-tuning with another precision
        # or device (a different Finetuner in the same program) starts a fresh one.
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=precision)


def check_world(accelerator) -> None:
    """Refuse a process group that accelerate does not see (it reads the launcher's environment),
    and accelerate's sharded modes, which rewrite the model the loop keeps working on
    (``Finetuner(fsdp=True)`` shards a copy instead)."""
    import torch.distributed as dist
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise ValueError("an accelerator configured for FSDP shards the model it prepares in place, and the loop "
                         "keeps pruning that model: pass Finetuner(fsdp=True) instead (mpruner shards a copy per "
                         "fine-tuning with torch FSDP2 and copies the trained weights back), without the "
                         "accelerate FSDP config")
    if kind == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed's engine replaces the model it prepares, and the loop keeps pruning that model; "
                         "use Finetuner(fsdp=True) for sharded fine-tuning, DDP (torchrun without a DeepSpeed "
                         "config), or your own DeepSpeed loop: MPruner(finetune=...) takes any callable")

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() != accelerator.num_processes:
        raise RuntimeError(f"a torch.distributed group of {dist.get_world_size()} ranks is initialised but accelerate "
                           f"sees {accelerator.num_processes} process(es): launch with torchrun or accelerate launch "
                           "(they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or pass "
                           "Finetuner(accelerator=...)")


def release(accelerator, model: nn.Module) -> None:
    """Drop accelerate's references to the model and optimizer, and give the model back its
    own ``forward`` (mixed precision wraps it in autocast)."""
    # What free_memory() does, without its full gc.collect() (half a second per attempt).
    for held in (accelerator._models, accelerator._optimizers, accelerator._schedulers, accelerator._dataloaders):
        held.clear()
    original = vars(model).pop("_original_forward", None)
    if original is None:
        return
    if getattr(original, "__func__", None) is type(model).forward:
        vars(model).pop("forward", None)
    else:
        model.forward = original

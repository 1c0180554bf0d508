"""Fully sharded recovery fine-tuning: ``Finetuner(fsdp=True)`` on torch's FSDP2 (``fully_shard``).

FSDP rewrites the module it shards (parameters become ``DTensor`` shards, the class is
swapped), while the pruning loop keeps analysing, cutting and rolling back one plain model on
every rank. So the loop's model is never sharded: each fine-tuning call shards a copy of it
across the ranks (one FSDP unit per block of the model's block lists, then the root), trains
the copy — parameters, gradients and AdamW's state split W ways — and gathers the trained
weights back into the plain model at the end. A failed call leaves the plain model as it was.

The rest of the step (every rank reading the same batches and training on its share of
each, the loss weights, accumulation, clipping, the finite check) is the Finetuner's own
step, driven here through the few methods it uses of an ``accelerate.Accelerator``, so DDP
and FSDP runs take the same optimizer steps. FSDP2 averages the gradients over the ranks as
DDP does, so W ranks with per-rank batch b take the step of one process with batch W * b.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Optional

import torch
import torch.nn as nn

FSDP_OPTIONS = ("reshard_after_forward", "wrap")


def check_fsdp_options(fsdp) -> Optional[dict]:
    """``Finetuner(fsdp=...)`` as a dict of options (None: no sharding)."""
    if fsdp is None or fsdp is False:
        return None
    if fsdp is True:
        return {}
    if not isinstance(fsdp, dict):
        raise TypeError(f"fsdp must be True, False/None or a dict of options {FSDP_OPTIONS}, got "
                        f"{type(fsdp).__name__}")
    unknown = sorted(set(fsdp) - set(FSDP_OPTIONS))
    if unknown:
        raise ValueError(f"fsdp: unknown option(s) {unknown}; valid: {list(FSDP_OPTIONS)}")
    wrap = fsdp.get("wrap", "blocks")
    if wrap not in ("blocks", "root") and not (isinstance(wrap, (list, tuple))
                                               and all(isinstance(c, type) for c in wrap)):
        raise ValueError(f"fsdp['wrap'] must be 'blocks' (one FSDP unit per block, the default), 'root' (the "
                         f"whole model as one unit) or a list of module classes, got {wrap!r}")
    return dict(fsdp)


def _process_group_world() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("Finetuner(fsdp=True) shards the model over the ranks of an initialised "
                           "torch.distributed process group: launch with torchrun (or call "
                           "torch.distributed.init_process_group first), or drop fsdp= for one process")
    return dist.get_world_size()


def _units(replica: nn.Module, wrap) -> list:
    """The submodules that become their own FSDP unit (all-gathered one at a time)."""
    if wrap == "root":
        return []
    if wrap == "blocks":
        from ..adapters import find_blocks

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the loop has announced the block lists already
                lists = find_blocks(replica)
        except (TypeError, ValueError):
            return []
        units = [block for bl in lists for _, block in bl]
    else:
        units = [m for m in replica.modules() if isinstance(m, tuple(wrap)) and m is not replica]
    # Units without parameters of their own have nothing to shard.
    return [u for u in units if any(True for _ in u.parameters())]


def shard_copy(model: nn.Module, options: dict) -> nn.Module:
    """A copy of ``model`` sharded over the process group (the model itself is left alone)."""
    from torch.distributed.fsdp import fully_shard

    _process_group_world()
    replica = copy.deepcopy(model)
    reshard = options.get("reshard_after_forward", True)
    for unit in _units(replica, options.get("wrap", "blocks")):
        fully_shard(unit, reshard_after_forward=reshard)
    fully_shard(replica, reshard_after_forward=reshard)
    return replica


def gather_into(replica: nn.Module, model: nn.Module) -> None:
    """Copies the sharded copy's trained weights into the plain model, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(replica, options=StateDictOptions(full_state_dict=True))
    with torch.no_grad():
        own = model.state_dict()
        missing = sorted(set(own) - set(full))
        if missing:
            raise RuntimeError(f"the sharded copy lacks {missing[:5]}: cannot copy its weights back")
        for name, value in own.items():
            value.copy_(full[name].to(value.device, value.dtype))


class ShardedDriver:
    """What the Finetuner's step needs of an Accelerator, for an FSDP2-sharded model."""

    def __init__(self, device: torch.device, amp_precision: str):
        import torch.distributed as dist

        if amp_precision == "fp16":
            raise ValueError("Finetuner(fsdp=True) supports amp='bf16' or no autocast; float16 needs a gradient "
                             "scaler that sharded training here does not run: use amp='bf16' or amp=False")
        self.num_processes = _process_group_world()
        self.process_index = dist.get_rank()
        self.is_main_process = self.process_index == 0
        self.device = device
        self.precision = amp_precision

    def prepare(self, model, optimizer):
        """The model is sharded already (``shard_copy``) and AdamW holds its shards: nothing to wrap."""
        return model, optimizer

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def no_sync(self, model):
        """Gradients of this batch stay local (reduce-scattered with the group's last batch)."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        if op != "sum":
            raise ValueError(f"only op='sum' is used, got {op!r}")
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params, max_norm: float):
        # On DTensor shards the total norm is computed over all ranks' pieces.
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

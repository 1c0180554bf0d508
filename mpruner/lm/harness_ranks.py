"""lm-eval under torchrun with a model in memory: each rank scores its share of the documents.

lm-eval shards an evaluation itself (``task.build_all_requests(rank=, world_size=)``: rank r
of W takes documents r, r + W, ...; padding requests keep the ranks' forward passes in step;
the per-document metrics are gathered on rank 0, which aggregates). Its ``HFLM`` does this only
for a model it loads itself under ``accelerate launch``; for a model passed in memory it
assumes one process. :class:`RankedHFLM` gives it the rank, the world size and the three
collectives it calls (``all_gather``, ``gather_object``, ``barrier``) from ``torch.distributed``,
so the same sharding runs under torchrun. Where the sharding cannot hold, :func:`shard_for`
refuses with the way out (``distributed=False``: every rank evaluates everything).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn

from ..distributed import Shard, resolve


def _devices(model: nn.Module) -> set:
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        return {str(d) for d in device_map.values()}
    return {str(p.device) for p in model.parameters()}


def shard_for(model: nn.Module, distributed) -> Optional[Shard]:
    """This rank's share for ``distributed`` (``"auto"``, True, False), or None: everything here.

    Refused (ValueError, before the model runs): a model dispatched over several devices
    (every rank would need all of them), and CPU weights under a process group that has no
    CPU backend (NCCL only moves CUDA tensors).
    """
    if distributed not in ("auto", True, False) or not isinstance(distributed, (str, bool)):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
    try:
        shard = resolve(distributed)
    except RuntimeError:
        raise RuntimeError("mpruner.lm.evaluate(distributed=True) needs an initialised torch.distributed process "
                           "group: launch with torchrun (mpruner.distributed.init_from_environment()), or pass "
                           "distributed='auto'") from None
    if shard is None:
        return None
    devices = _devices(model)
    if len(devices) > 1:
        raise ValueError(f"lm-eval shards documents over the ranks, each rank with the whole model; this model is "
                         f"spread over {sorted(devices)} (device_map). Pass distributed=False (every rank evaluates "
                         "everything), or load one copy of the model per rank")
    import torch.distributed as dist

    backend = str(dist.get_backend()).lower()
    if devices == {"cpu"} and "gloo" not in backend and "mpi" not in backend:
        raise ValueError(f"the model is on the CPU but the process group's backend is {backend!r}, which moves only "
                         "CUDA tensors: put the model on this rank's GPU, initialise the group with gloo "
                         "(\"cpu:gloo,cuda:nccl\"), or pass distributed=False")
    return shard


def _gather_device(tensor: torch.Tensor) -> torch.device:
    import torch.distributed as dist

    return tensor.device if "nccl" not in str(dist.get_backend()).lower() or tensor.is_cuda else \
        torch.device("cuda", torch.cuda.current_device())


@functools.lru_cache(maxsize=1)
def ranked_lm_class():
    """``HFLM`` with torchrun's rank and collectives (a class made once lm-eval is imported)."""
    from lm_eval.models.huggingface import HFLM

    class RankedHFLM(HFLM):
        """lm-eval's HFLM on a model in memory, as rank ``shard.rank`` of ``shard.world``."""

        def __init__(self, *, shard: Optional[Shard] = None, **kwargs):
            super().__init__(**kwargs)
            self.shard = shard
            if shard is not None:
                self._rank, self._world_size = shard.rank, shard.world

        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            if self.world_size <= 1:
                return tensor
            import torch.distributed as dist

            # As accelerate's gather: a 0-d tensor becomes one entry per rank, others concatenate.
            mine = (tensor.unsqueeze(0) if tensor.dim() == 0 else tensor).to(_gather_device(tensor))
            every = [torch.empty_like(mine) for _ in range(self.world_size)]
            dist.all_gather(every, mine)
            return torch.cat(every).to(tensor.device)

        def barrier(self) -> None:
            if self.world_size > 1:
                import torch.distributed as dist

                dist.barrier()

        def get_model_info(self) -> dict:
            # HFLM's own looks the model up on the Hub by name; a model in memory has no Hub name.
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(next(self._model.parameters()).dtype), "model_revision": None,
                    "model_sha": ""}

    return RankedHFLM


def share_results(results: Optional[dict], shard: Optional[Shard]) -> dict:
    """Rank 0's results dict on every rank (lm-eval returns None on the others)."""
    if shard is None:
        return results
    import torch.distributed as dist

    box = [results if shard.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, device=shard.device)
    return box[0]

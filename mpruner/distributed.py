"""Ranks under torchrun: which batches are this rank's, sums over the ranks, the loop's decisions.

Every stage that runs under torchrun takes its collectives from here (only
``torch.distributed``'s; nothing here opens a connection itself):

- :class:`Shard` / :func:`resolve`: rank r of W takes batches r, r + W, r + 2W, ... of the same
  iterable (no padding duplicates, unlike ``DistributedSampler``), so the union over ranks is
  exactly the single-process stream (``analyze``, ``accuracy``, ``perplexity``).
- :func:`flagged_sum` / :func:`sum_over_ranks`: float64 sums over the ranks in one all-reduce,
  with a failure flag: a rank whose share raised still joins, so the others raise instead of
  waiting for it.
- :class:`Ranks`: the MPruner loop's view: every rank runs it, rank 0 decides and writes.

- The analysis is sharded over the ranks and all-reduced (``analyze(distributed="auto")``);
  fine-tuning is data-parallel on accelerate (:class:`mpruner.Finetuner`).
- ``evaluate(model)`` runs on every rank; the loop uses the mean of the ranks' values (the
  value itself when every rank evaluates the whole set, the global metric when each rank
  evaluates an equal share or already all-reduces).
- Rank 0 plans the removal and decides accept / roll back; the others receive its decision
  (``broadcast_object_list``), so surgery is identical on every rank. Only rank 0 writes
  checkpoints and reports (atomically); on resume rank 0 reads the state and sends it on.
- A rank that dies or hangs: the others fail at their next collective, at once when the
  connection drops, at the latest after the process group's timeout (torch's default
  30 minutes for gloo, 10 for NCCL; ``mpruner prune --timeout``), with an error that names
  the intact last checkpoint. torchrun then stops the remaining ranks.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional

import torch


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_environment(timeout_s: Optional[float] = None) -> None:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1)
    and none exists: gloo for CPU tensors, plus NCCL for CUDA tensors when GPUs are visible."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=float(timeout_s))}
    dist.init_process_group(backend, **kwargs)


# How torch.distributed's backends report a peer that went away or a collective that timed out.
_LOST = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "timeout", "broken pipe")


def lost_contact(error: BaseException) -> bool:
    """Whether ``error`` comes from a collective that lost a rank (died, or past the timeout)."""
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or any(word in str(error).lower() for word in _LOST)


class Ranks:
    """This process's part in a run: rank 0 of 1 without a process group."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def current(cls) -> "Ranks":
        """From the initialised process group (initialising it first under torchrun)."""
        import torch.distributed as dist

        init_from_environment()
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Every rank takes rank 0's parameters and buffers (in place), so that what each rank
        initialised on its own (a new head, dropout-free copies of random weights) is the same."""
        if not self.active:
            return
        import torch.distributed as dist

        device = _collective_device()
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                box = tensor.detach().to(device)
                dist.broadcast(box, src=0)
                if box is not tensor:
                    tensor.copy_(box)

    def metric(self, value: float) -> float:
        """The ranks' mean metric (exactly ``value`` when every rank has the same)."""
        if not self.active:
            return value
        import torch.distributed as dist

        mine = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        values = [float(v.item()) for v in every]
        if all(v == values[0] or (math.isnan(v) and math.isnan(values[0])) for v in values):
            return values[0]
        return math.fsum(values) / len(values)

    @contextlib.contextmanager
    def guard(self, checkpoint_dir):
        """Turn a failed collective (a rank died, or did not answer in time) into a clear error."""

        try:
            yield
        except RuntimeError as e:
            if not self.active or not lost_contact(e):
                raise
            where = (f"the last checkpoint in {checkpoint_dir} is intact (rank 0 writes it atomically); rerun with "
                     "resume=True (mpruner prune --resume), with any number of ranks" if checkpoint_dir is not None
                     else "no checkpoint_dir was given, so nothing was kept")
            raise RuntimeError(f"mpruner: rank {self.rank} of {self.world} lost another rank (it died, or did not "
                               f"answer within the process group's timeout): {str(e).splitlines()[0]}; "
                               f"{where}") from e


# ---------------------------------------------------------------- shards of a batch stream
DISTRIBUTED_CHOICES = ("auto", True, False)


@dataclass
class Shard:
    """This process's place in the process group: rank r of world W."""

    rank: int
    world: int
    group: object = None

    def take(self, batches: Iterable) -> Iterable:
        """Batches r, r + W, r + 2W, ... of ``batches``."""
        return itertools.islice(batches, self.rank, None, self.world)

    def count(self, total: Optional[int]) -> Optional[int]:
        """How many of ``total`` batches this rank takes."""
        return None if total is None else max(0, math.ceil((total - self.rank) / self.world))

    @property
    def device(self) -> torch.device:
        """Where collectives run: the current CUDA device for NCCL, the CPU otherwise."""
        import torch.distributed as dist

        if dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def resolve(distributed) -> Optional[Shard]:
    """The shard to analyse for ``analyze(distributed=...)``; None means every batch here.

    ``"auto"``: shard when a process group of more than one rank is initialised.
    ``True``: shard, and fail clearly when no process group is initialised. ``False``: never.
    """
    if distributed not in DISTRIBUTED_CHOICES or not isinstance(distributed, (str, bool)):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
    if distributed is False:
        return None
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if distributed is True:
            raise RuntimeError("analyze(distributed=True) needs an initialised torch.distributed process group: "
                               "launch with torchrun and call torch.distributed.init_process_group() first, or "
                               "pass distributed='auto' (shard only when a group exists) or False")
        return None
    world = dist.get_world_size()
    if distributed == "auto" and world == 1:
        return None
    return Shard(dist.get_rank(), world)


def _all_reduce(shard: Shard, flat: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    flat = flat.to(shard.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=shard.group)
    return flat.cpu()


def flagged_sum(shard: Shard, values: torch.Tensor, failure: Optional[BaseException], failed_message: str
                 ) -> torch.Tensor:
    """The float64 ``values`` summed over all ranks, with a failure flag in the same all-reduce.

    Every rank calls it, also one whose share raised (``failure``, with zeros as its values):
    that rank re-raises its own error; the others raise a RuntimeError (``failed_message``,
    formatted with ``failed`` and ``world``) instead of waiting for it.
    """
    flat = _all_reduce(shard, torch.cat([torch.tensor([float(failure is not None)], dtype=torch.float64), values]))
    if failure is not None:
        raise failure
    failed = int(flat[0].item())
    if failed:
        raise RuntimeError(failed_message.format(failed=failed, world=shard.world))
    return flat[1:]


def sum_over_ranks(shard: Shard, values: List[float], what: str,
                   failure: Optional[BaseException] = None) -> List[float]:
    """Float64 sums of ``values`` over all ranks in one all-reduce (evaluation metrics' sums).

    As in :func:`flagged_sum`, a rank whose share raised (``failure``) still joins with a
    failure flag and re-raises its own error, so the other ranks raise instead of waiting.
    """
    flat = torch.tensor([0.0 if failure else float(v) for v in values], dtype=torch.float64)
    return flagged_sum(shard, flat, failure, what + " failed on {failed} of {world} ranks (their error is in "
                        "their own output)").tolist()

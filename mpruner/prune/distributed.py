"""The MPruner loop under torchrun: every rank runs it, rank 0 decides and writes.

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

Only ``torch.distributed`` collectives are used; nothing here opens a connection itself.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from typing import Optional

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
        import torch.distributed as dist

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

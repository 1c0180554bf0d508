"""The run of prune_job.py, launchable by torchrun, with a rank that can be killed.

    torchrun --standalone --nproc_per_node 2 tests/helpers/prune_job_torchrun.py CKPT OUT
             [--kill-at N | --hang-at N] [--kill-rank R] [--timeout S] [--resume]

With --kill-at N, rank R (default: every rank) SIGKILLs itself during its N-th evaluation;
with --hang-at N it stops answering there (sleeps until torchrun stops it, however long the
process group's timeout). --timeout is the process group's, in seconds.
Rank 0 writes OUT (the result summary and the final weights). The functions model, calib,
train and evaluate are the same run's factories for ``mpruner prune --model FILE:model ...``.
"""
import argparse
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # started by path (torchrun, or mpruner prune --model FILE:model)
    sys.path.insert(0, ROOT)
import mpruner  # noqa: E402
from tests.helpers import prune_job  # noqa: E402


def model():
    return prune_job.build()[0]


def calib():
    return [x for x, _ in prune_job.make_task()[0]]


def train():
    return prune_job.make_task()[0]


def evaluate():
    evald = prune_job.make_task()[1]
    return lambda m: prune_job.accuracy(m, evald)


def run(ckpt, kill_at=0, kill_rank=None, resume=False, hang_at=0):
    rank = int(os.environ.get("RANK", "0"))
    model, train, evald = prune_job.build()
    calls = {"n": 0}

    def evaluate(m):
        calls["n"] += 1
        if kill_rank in (None, rank):
            if calls["n"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if calls["n"] == hang_at:
                while True:  # torchrun stops this rank once another has failed
                    time.sleep(60)
        return prune_job.accuracy(m, evald)

    pruner = mpruner.MPruner(model, [x for x, _ in train], evaluate,
                             finetune=mpruner.Finetuner(train, epochs=1, lr=1e-3, progress=False),
                             layers="blocks", threshold=0.95, tolerance=0.05, view="flatten",
                             checkpoint_dir=ckpt, progress=False)
    return pruner, pruner.run(resume=resume)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--hang-at", type=int, default=0)
    p.add_argument("--kill-rank", type=int)
    p.add_argument("--timeout", type=float)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    from mpruner.distributed import init_from_environment

    init_from_environment(args.timeout)
    pruner, result = run(args.ckpt, args.kill_at, args.kill_rank, args.resume, args.hang_at)
    if pruner.ranks.is_main:
        weights = {k: v.tolist() for k, v in result.model.state_dict().items()}
        with open(args.out, "w") as f:
            json.dump({"summary": result.to_dict(), "weights": weights, "world": pruner.ranks.world}, f)


if __name__ == "__main__":
    main()

"""A small, deterministic MPruner run used by the checkpoint/resume tests.

    python tests/helpers/prune_job.py CKPT_DIR OUT_JSON [--kill-at N] [--resume]

With --kill-at N the process SIGKILLs itself during the N-th evaluation, i.e. in
the middle of an attempt, as a crash or an OOM kill would; with --kill-in "POINT:N"
at the N-th pass of a kill point of tests/helpers/faults.py (analysis, surgery, a fine-tuning
step, each checkpoint rename, the healing state's rename); --heal-every S writes the healing state
at most every S seconds (0: after every step). Imported as ``tests.helpers.prune_job`` by the tests.
"""
import argparse
import json
import os
import signal
import sys

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # started by path: this checkout's mpruner and tests package
    sys.path.insert(0, ROOT)
import mpruner  # noqa: E402


class Residual(nn.Module):
    def __init__(self, d, scale):
        super().__init__()
        self.lin = nn.Linear(d, d)
        with torch.no_grad():
            self.lin.weight.mul_(scale)
            self.lin.bias.mul_(scale)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class Net(nn.Module):
    """Input projection, 8 residual blocks (some nearly identity: redundant), a head."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(10, 24)
        self.blocks = nn.Sequential(*[Residual(24, s) for s in (1.0, 0.02, 0.02, 0.02, 1.0, 0.02, 0.02, 1.0)])
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


def make_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(384, 10, generator=g)
    teacher = torch.randn(10, 3, generator=g)
    y = (x @ teacher).argmax(1)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 384, 32)]
    return batches[:8], batches[8:]  # train, eval


def build(seed=0):
    torch.manual_seed(seed)
    model = Net()
    train, evald = make_task(seed)
    mpruner.Finetuner(train, epochs=3, lr=1e-2, progress=False)(model)
    return model, train, evald


def pruner(job, **kw):
    """An MPruner on ``job`` = (model, calibration batches): the blocks, metric 1, no bars; ``kw`` overrides."""
    model, calib = job
    args = dict(model=model, calib_data=calib, evaluate=lambda m: 1.0, layers="blocks", progress=False)
    args.update(kw)
    return mpruner.MPruner(**args)


def blocks_metric(model):
    """1 for the whole model, 0.01 less per removed block: which removals pass is known."""
    return 1.0 - 0.01 * (8 - len(model.blocks))


def accuracy(model, batches):
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("out")
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-in", default="")
    p.add_argument("--heal-every", type=float, default=300.0, help="Finetuner checkpoint_every (seconds)")
    args = p.parse_args()
    import contextlib

    from tests.helpers import faults

    armed = contextlib.nullcontext()
    if args.kill_in:
        point, _, n = args.kill_in.rpartition(":")
        armed = faults.kill_point(point, int(n))
    model, train, evald = build()
    calls = {"n": 0}
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = {"n": 0}  # the fine-tuning steps this process takes (a resumed healing takes only the rest)
    register_optimizer_step_post_hook(lambda *a: steps.__setitem__("n", steps["n"] + 1))

    def evaluate(m):
        calls["n"] += 1
        if calls["n"] == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return accuracy(m, evald)

    pruner = mpruner.MPruner(model, [x for x, _ in train], evaluate,
                             finetune=mpruner.Finetuner(train, epochs=1, lr=1e-3, progress=False,
                                                        checkpoint_every=args.heal_every),
                             layers="blocks", threshold=0.95, tolerance=0.05, view="flatten",
                             checkpoint_dir=args.ckpt, progress=False)
    with armed:
        result = pruner.run(resume=args.resume)
    weights = {k: v.tolist() for k, v in result.model.state_dict().items()}
    with open(args.out, "w") as f:
        json.dump({"summary": result.to_dict(), "weights": weights, "steps": steps["n"]}, f)


if __name__ == "__main__":
    main()

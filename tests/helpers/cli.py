"""The command line in-process: ``run(capsys, *argv)`` gives what ``mpruner *argv`` exits with
and prints, and ``NETS`` is a ``nets.py`` of factories for a five-block residual net that no
adapter knows (tests/cli/conftest.py writes it into a temporary directory)."""
import sys

from mpruner.cli import main

NETS = '''
import os
import torch, torch.nn as nn

if os.environ.get("MPRUNER_TEST_MARKER"):
    open(os.environ["MPRUNER_TEST_MARKER"], "a").write("imported\\n")  # the model module was loaded


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.lin(x))


class Net(nn.Module):
    """No adapter knows it; its only nn.Sequential of blocks is `blocks`."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[Block(16) for _ in range(5)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def build():
    return Net()


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 16, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


def calib():
    return [x for x, _ in _batches(4, 1)]


def train():
    return _batches(2, 2)


def evaluate(model):  # the metric function itself, as the Python API takes it
    with torch.no_grad():
        return sum((model(x).argmax(-1) == y).float().mean().item() for x, y in _batches(2, 3)) / 2
'''


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``mpruner *argv``; argparse errors exit with 2."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err

"""`mpruner info` (mpruner/cli/info.py): how mpruner was built and what this machine offers."""
import subprocess
import sys

import mpruner


def test_info_command():
    out = subprocess.run([sys.executable, "-m", "mpruner", "info"], capture_output=True, text=True, check=True).stdout
    for key in ("mpruner", "torch", "backends compiled", "CUDA version", "CUDA archs", "OpenMP"):
        assert key in out
    assert mpruner.__version__ in out

"""benchmarks/gpu_check.sh on a machine without a GPU: it must still write gpu_check.json, naming
the step that failed, the versions it found and the commit (from git, or passed in when the
checkout has no .git), and keep every step limit inside its total."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or shutil.which("bash") is None or
                                shutil.which("timeout") is None,
                                reason="a machine with a GPU runs the real check; this one needs bash and timeout")


def _run(script, out, *args, **env):
    full = dict(os.environ, PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", script, str(out), *args], capture_output=True, text=True, env=full, timeout=120)
    with open(os.path.join(out, "gpu_check.json")) as f:
        return proc, json.load(f)


def test_no_gpu_writes_the_json_naming_the_failing_step(tmp_path):
    proc, info = _run(SCRIPT, tmp_path / "results")
    assert proc.returncode != 0
    assert info["status"] == "failed" and info["failed_step"] == "device", info
    assert info["steps"]["device"]["status"] == "failed" and info["steps"]["device"]["exit_code"] == 1
    assert all(info["steps"][s]["status"] == "not run" for s in ("build", "load", "tests", "bench_engine")), info
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda and info["device"] is None
    if os.path.isdir(os.path.join(ROOT, ".git")):
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert info["commit"] == head and info["commit_source"] == "git"
    assert "torch sees no CUDA device" in open(tmp_path / "results" / "device.log").read()


def test_without_git_the_commit_comes_from_the_argument(tmp_path):
    tree = tmp_path / "copy" / "benchmarks"
    tree.mkdir(parents=True)
    script = shutil.copy(SCRIPT, tree / "gpu_check.sh")
    proc, info = _run(str(script), tmp_path / "results", "0123abc")
    assert info["commit"] == "0123abc" and info["commit_source"] == "argument", info
    assert info["failed_step"] == "device"
    _, info = _run(str(script), tmp_path / "results2")
    assert info["commit"] is None and info["commit_source"] == "none"


def test_a_step_that_would_overrun_the_total_is_not_started(tmp_path):
    _, info = _run(SCRIPT, tmp_path / "results", GPU_CHECK_TOTAL_S="12")
    assert info["failed_step"] == "device" and info["steps"]["device"]["status"] == "no time", info


def test_step_limits_fit_the_total_with_their_grace():
    text = open(SCRIPT).read()
    limits = [int(m) for m in re.findall(r"^step \w+ (\d+) ", text, flags=re.M)]
    grace = int(re.search(r"^GRACE=(\d+)", text, flags=re.M).group(1))
    reserve = int(re.search(r"^RESERVE=(\d+)", text, flags=re.M).group(1))
    total = int(re.search(r'GPU_CHECK_TOTAL_S:-(\d+)', text).group(1))
    assert len(limits) == 7 and total <= 400
    assert sum(limits) + len(limits) * grace + reserve <= total, (limits, grace, reserve)

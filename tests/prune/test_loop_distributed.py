"""The MPruner loop under torchrun (2 gloo ranks on the CPU), fine-tuning by DDP or FSDP:
the same accepted removals, metric and weights as one process; a killed or hung rank ends the run with a clear error and
an intact last checkpoint; resume with the same or another number of ranks.

No time limit here is a guess at how fast this machine is: the hung rank's process-group
timeout is a multiple of what a healthy rank takes, measured first on this machine as it is
loaded now, and the subprocess limits only stop a run that never ends."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import prune_job_torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = prune_job_torchrun.__file__

pytestmark = pytest.mark.slow


def torchrun(*args, nproc=2, timeout=1800):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def outcome(summary):
    return ([(h["removed"], h["metric"], h["accepted"]) for h in summary["history"]], summary["metric_before"],
            summary["metric_after"], summary["stop_reason"])


def assert_same_run(got, ref):
    assert outcome(got["summary"]) == outcome(ref["summary"])
    for name, value in ref["weights"].items():
        np.testing.assert_allclose(np.array(got["weights"][name]), np.array(value), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tests.helpers import prune_job_torchrun as job

    start = time.perf_counter()
    _, result = job.run(str(tmp_path_factory.mktemp("ref") / "ckpt"))
    return {"summary": result.to_dict(), "weights": {k: v.tolist() for k, v in result.model.state_dict().items()},
            "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def healthy_wait(reference):
    """The longest a healthy rank can keep another waiting at a collective, measured here, now: the
    ranks start apart by up to one interpreter start (importing torch, mpruner and the job), and
    between two collectives a rank does at most the whole run's work (the one-process reference)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tests.helpers.prune_job_torchrun"], env=env, cwd=ROOT, check=True)
    return time.perf_counter() - start + reference["seconds"]


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_cli_under_torchrun_equals_one_process(tmp_path, reference, sharding):
    f = JOB
    proc = torchrun("-m", "mpruner", "prune", "--model", f"{f}:model", "--calib", f"{f}:calib", "--train",
                    f"{f}:train", "--eval", f"{f}:evaluate", "--layers", "blocks", "--threshold", "0.95",
                    "--tolerance", "0.05", "--view", "flatten", "--epochs", "1", "--lr", "1e-3",
                    "--out", str(tmp_path / "out"), "--no-progress", *sharding)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    ref = reference["summary"]
    assert summary["removed"] == [h["removed_names"] for h in ref["history"] if h["accepted"]]
    assert summary["metric_after"] == ref["metric_after"] and summary["metric_before"] == ref["metric_before"]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports


def _assert_intact(ckpt):
    state = json.loads((ckpt / "state.json").read_text())
    assert state["iteration"] == 1 and (ckpt / state["model_dir"]).is_dir()
    assert not list(ckpt.glob(".*tmp*"))
    return state


def test_killed_rank_fails_the_run_then_one_process_resumes(tmp_path, reference):
    from tests.helpers import prune_job_torchrun as job

    ckpt = tmp_path / "ckpt"
    proc = torchrun(JOB, str(ckpt), str(tmp_path / "out.json"), "--kill-at", "3", "--kill-rank", "1")
    assert proc.returncode != 0
    assert "rank 0 of 2 lost another rank" in proc.stderr or "SIGTERM" in proc.stderr, proc.stderr[-3000:]
    _assert_intact(ckpt)
    _, result = job.run(str(ckpt), resume=True)  # another world size: one process
    got = {"summary": result.to_dict(), "weights": {k: v.tolist() for k, v in result.model.state_dict().items()}}
    assert_same_run(got, reference)


def test_hung_rank_times_out_then_two_ranks_resume(tmp_path, reference, healthy_wait):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.json"
    # Ten times the longest healthy wait (and at least a minute): a slow, loaded machine cannot
    # make a healthy collective outlast it, while the hung rank (asleep until torchrun stops it)
    # always does.
    timeout = max(60.0, 10 * healthy_wait)
    proc = torchrun(JOB, str(ckpt), str(out), "--hang-at", "3", "--kill-rank", "1", "--timeout", f"{timeout:.0f}",
                    timeout=1800 + 3 * timeout)
    assert proc.returncode != 0
    assert "rank 0 of 2 lost another rank (it died, or did not answer within the process group's timeout)" \
        in proc.stderr, proc.stderr[-3000:]
    assert "is intact" in proc.stderr and "resume" in proc.stderr
    _assert_intact(ckpt)
    proc = torchrun(JOB, str(ckpt), str(out), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world"] == 2
    assert_same_run(got, reference)

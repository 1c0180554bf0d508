"""Faults injected into the pruning loop (tests/helpers/faults.py): SIGKILL at every stage and at each
checkpoint rename, a full disk on every checkpoint write, damaged checkpoints, evaluate and
finetune raising. After each: the caller's model is unchanged, the last complete checkpoint
is intact, and resume=True reaches the uninterrupted run's result, weights bitwise."""
import errno
import json
import subprocess
import sys

import pytest
import torch

import mpruner
from mpruner.prune import checkpoint as ckpt

from tests.helpers import faults
from tests.helpers import prune_job

JOB = prune_job.__file__


def _strip(summary):
    out = {k: v for k, v in summary.items() if k not in ("seconds", "history")}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in summary["history"]]
    return out


def _job(ckpt_dir, out, *extra):
    return subprocess.run([sys.executable, JOB, str(ckpt_dir), str(out), *extra],
                          capture_output=True, text=True, timeout=900)


def _assert_checkpoint_intact(d):
    """Whatever a kill left: no state at all, or a valid state whose model loads."""
    state = ckpt.read_state(d)
    if state is not None:
        mpruner.load_pruned(d / state["model_dir"], prune_job.Net)
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    proc = _job(d / "ck", d / "ref.json")
    assert proc.returncode == 0, proc.stderr
    ref = json.loads((d / "ref.json").read_text())
    assert len(ref["summary"]["history"]) == 2  # one accepted removal, one rollback: both paths are covered
    return ref


# (kill point, pass): the 2nd analysis follows the accepted attempt 0; fine-tuning step 35 is in
# attempt 1 (build() takes 24 steps, attempt 0 eight); state.json is written 3 times, the model once.
KILLS = [("analysis", 2), ("surgery", 2), ("finetune step", 35), ("state write, before rename", 1),
         ("state write, before rename", 2), ("state write, after rename", 2), ("model write, before rename", 1),
         ("between model and state renames", 1)]


@pytest.mark.slow
@pytest.mark.parametrize("point,n", KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_sigkill_then_resume_reaches_the_same_result(reference, tmp_path, point, n):
    proc = _job(tmp_path / "ck", tmp_path / "out.json", "--kill-in", f"{point}:{n}")
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    _assert_checkpoint_intact(tmp_path / "ck")
    proc = _job(tmp_path / "ck", tmp_path / "out.json", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert _strip(got["summary"]) == _strip(reference["summary"])
    assert got["weights"] == reference["weights"]  # bitwise: JSON floats round-trip exactly


# (kill point, pass, the loop's fine-tuning steps in the resumed process) with the healing state
# written after every step but an attempt's last: build() takes 24 steps, each attempt 8. Step 35
# is attempt 1's third, after 2 saved states: 6 steps when resumed. Healing write 11 is attempt 1's
# fourth (attempt 0 writes 7): killed before its rename, the state after step 3 stands: 5 steps.
HEALING_KILLS = [("finetune step", 35, 6), ("healing state write, before rename", 11, 5)]


@pytest.mark.slow
@pytest.mark.parametrize("point,n,steps", HEALING_KILLS, ids=[f"{p}-{n}" for p, n, _ in HEALING_KILLS])
def test_a_killed_healing_resumes_from_its_own_checkpoint(reference, tmp_path, point, n, steps):
    """The resumed run takes only the steps the killed healing had not checkpointed, and ends with
    the uninterrupted run's result, bitwise."""
    every = ("--heal-every", "0")
    proc = _job(tmp_path / "ck", tmp_path / "out.json", "--kill-in", f"{point}:{n}", *every)
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])
    assert (tmp_path / "ck" / "healing.pt").is_file()
    proc = _job(tmp_path / "ck", tmp_path / "out.json", "--resume", *every)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "out.json").read_text())
    assert _strip(got["summary"]) == _strip(reference["summary"])
    assert got["weights"] == reference["weights"]
    assert reference["steps"] == 8 + 8 and got["steps"] == steps  # not the 8 of a healing started over
    assert not (tmp_path / "ck" / "healing.pt").exists()  # removed once the healing finished


# ---------------------------------------------------------------- in-process faults
@pytest.fixture(scope="module")
def task():
    return prune_job.build()


def _pruner(task, d, **kw):
    model, train, evald = task
    opts = dict(finetune=mpruner.Finetuner(train, epochs=1, lr=1e-3, progress=False), layers="blocks",
                threshold=0.95, tolerance=0.05, view="flatten", checkpoint_dir=d, progress=False)
    opts.update(kw)
    evaluate = opts.pop("evaluate", lambda m: prune_job.accuracy(m, evald))
    return mpruner.MPruner(model, [x for x, _ in train], evaluate, **opts)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def inprocess_reference(task, tmp_path_factory):
    d = tmp_path_factory.mktemp("inref")
    with faults.count_writes() as writes:
        result = _pruner(task, d).run()
    return result, writes["n"]


def _resume_matches(task, d, reference):
    result = _pruner(task, d).run(resume=True)
    assert [(h.removed, h.accepted, h.metric) for h in result.history] == \
        [(h.removed, h.accepted, h.metric) for h in reference.history]
    assert _same(_weights(result.model), _weights(reference.model))


@pytest.mark.slow
def test_full_disk_on_every_checkpoint_write(task, inprocess_reference, tmp_path):
    reference, writes = inprocess_reference
    assert writes >= 4  # the model once, state.json after each attempt and at the end
    before = _weights(task[0])
    for n in range(1, writes + 1):
        d = tmp_path / f"w{n}"
        with faults.enospc_on_write(n), pytest.raises(OSError) as info:
            _pruner(task, d).run()
        assert info.value.errno == errno.ENOSPC
        assert _same(_weights(task[0]), before)  # the caller's model
        _assert_checkpoint_intact(d)
        _resume_matches(task, d, reference)  # the disk has room again


@pytest.mark.slow
@pytest.mark.parametrize("which,n", [("evaluate", 2), ("evaluate", 3), ("finetune", 1), ("finetune", 2)])
def test_evaluate_or_finetune_raising(task, inprocess_reference, tmp_path, which, n):
    reference, _ = inprocess_reference
    model, train, evald = task
    before = _weights(model)
    calls = {"n": 0}
    real = {"evaluate": lambda m: prune_job.accuracy(m, evald),
            "finetune": mpruner.Finetuner(train, epochs=1, lr=1e-3, progress=False)}[which]

    def failing(m):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError(f"{which} failed")
        return real(m)
    with pytest.raises(RuntimeError, match=f"{which} failed"):
        _pruner(task, tmp_path, **{which: failing}).run()
    assert _same(_weights(model), before)
    _assert_checkpoint_intact(tmp_path)
    _resume_matches(task, tmp_path, reference)


@pytest.mark.parametrize("damage", ["truncate state", "garbage state", "state names a missing model",
                                    "truncate weights", "flip weight bytes", "delete weights"])
def test_damaged_checkpoint_is_refused_naming_the_file(task, tmp_path, damage):
    d = tmp_path / "ck"
    _pruner(task, d, finetune=None, max_iterations=1).run()
    state_path = d / "state.json"
    model_dir = d / json.loads(state_path.read_text())["model_dir"]
    weights = model_dir / "model.safetensors"
    if damage == "truncate state":
        state_path.write_bytes(state_path.read_bytes()[:40])
    elif damage == "garbage state":
        state_path.write_bytes(b"\x00\xff" * 10)
    elif damage == "state names a missing model":
        state = json.loads(state_path.read_text())
        state["model_dir"] = "model-0042"
        state_path.write_text(json.dumps(state))
    elif damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip weight bytes":
        data = bytearray(weights.read_bytes())
        data[4] ^= 0xFF  # the header length
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    snapshot = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    named = "state.json" if "state" in damage else "model.safetensors"
    with pytest.raises((ValueError, FileNotFoundError), match=named):
        _pruner(task, d, finetune=None, max_iterations=1).run(resume=True)
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == snapshot  # nothing overwritten

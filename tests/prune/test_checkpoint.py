"""Checkpoints of a pruning run (mpruner/prune/checkpoint.py) and resume: state.json's
checks and messages, atomic writes, old models cleared, the directory checked before a run;
a resumed run reaches the uninterrupted run's result and leaves the caller's model alone.

The checkpoint is a format older runs wrote and other tools read, so its fields and every
refusal's message are pinned word for word. Faults injected into a run (SIGKILL, a full
disk, damaged files) are tests/test_faults.py.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import mpruner
from mpruner.prune import checkpoint as ckpt
from tests.helpers import prune_job
from tests.helpers.caller_frame import warned_at_caller
from tests.helpers.prune_job import blocks_metric as _blocks_metric
from tests.helpers.prune_job import pruner as _pruner

JOB = prune_job.__file__
ADAPTER_GUESS = "ignore:no mpruner adapter recognises"


def _state(tmp_path, **changes):
    """A valid version-1 state.json body whose model directory exists."""
    (tmp_path / "model-0001").mkdir(exist_ok=True)
    state = {"version": 1, "options": {}, "iteration": 0, "granularity": 1, "metric_before": None,
             "metric_current": None, "done": False, "stop_reason": "", "seconds": {}, "model_dir": "model-0001",
             "rejected": [], "excluded": [], "history": []}
    state.update(changes)
    return state


# Block 0 is a valid index to exclude or reject (the check is i >= 0, not i > 0).
def test_state_accepts_index_zero(tmp_path):
    state = _state(tmp_path, excluded=[0], rejected=[[0, 2]])
    assert ckpt.validate_state(tmp_path / ckpt.STATE, state) is state


# An index must be an int (not a bool, not a float) and >= 0: -1, True and 1.5 are each
# refused naming the field.
@pytest.mark.parametrize("bad", [-1, True, 1.5])
@pytest.mark.parametrize("field", ["excluded", "rejected"])
def test_state_refuses_negative_bool_and_float_indices(tmp_path, bad, field):
    state = _state(tmp_path, **{field: [bad] if field == "excluded" else [[bad]]})
    with pytest.raises(ValueError, match=f"state.json: has an invalid '{field}'"):
        ckpt.validate_state(tmp_path / ckpt.STATE, state)


# The error tells the user how to get out (README "Reliability": refused with the file named,
# never overwritten).
def test_damaged_state_error_says_what_to_do(tmp_path):
    with pytest.raises(ValueError) as info:
        ckpt.validate_state(tmp_path / ckpt.STATE, [])
    # the file, then what is wrong with it
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: holds a list, not a JSON object; ")
    assert str(info.value).endswith("Move it away (or use another checkpoint_dir) to start afresh; "
                                    "mpruner will not overwrite it")


# Each differing option is listed, separated by "; ".
def test_checkpoint_mismatch_lists_each_option(tmp_path):
    e = ckpt.CheckpointMismatch(tmp_path, ckpt.option_differences({"a": 1, "b": 2}, {"a": 3, "b": 4}))
    assert "(a: 1 in the checkpoint, 3 now; b: 2 in the checkpoint, 4 now)" in str(e)


# An option added or dropped since the checkpoint is a difference (None on the side that lacks
# it), as is a changed value.
def test_option_differences_include_options_on_one_side_only():
    assert ckpt.option_differences({"a": 1, "b": 2}, {"b": 2, "c": 3}) == {"a": (1, None), "c": (None, 3)}
    assert ckpt.option_differences({"a": 1}, {"a": 2}) == {"a": (1, 2)}


# state.json stays readable, one field a line, and no temporary file is left beside it.
def test_write_json_atomic_is_indented_and_leaves_no_temporary(tmp_path):
    ckpt.write_json_atomic(tmp_path / "s.json", {"a": 1, "b": [2]})
    assert (tmp_path / "s.json").read_text() == json.dumps({"a": 1, "b": [2]}, indent=1)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


# read_state_file (the pipeline's reader): None without the file, its JSON with it.
def test_read_state_file(tmp_path):
    assert ckpt.read_state_file(tmp_path / "state.json") is None
    (tmp_path / "state.json").write_text('{"stage": 2}')
    assert ckpt.read_state_file(tmp_path / "state.json") == {"stage": 2}


# The stale temporary directory of a killed save is cleared first: nothing left in it reaches
# the model directory.
def test_save_model_atomic_clears_a_stale_temporary(tmp_path):
    import torch.nn as nn

    stale = tmp_path / f".model-0001.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"half a save")
    ckpt.save_model_atomic(tmp_path, "model-0001", nn.Linear(2, 2))
    assert "junk.bin" not in os.listdir(tmp_path / "model-0001") and not stale.exists()


# Saving under a name already there replaces that model directory.
def test_save_model_atomic_replaces_an_existing_model(tmp_path):
    import torch.nn as nn
    from safetensors.torch import load_file

    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    ckpt.save_model_atomic(tmp_path, "model-0001", first)
    ckpt.save_model_atomic(tmp_path, "model-0001", second)
    saved = {k: v for f in (tmp_path / "model-0001").glob("*.safetensors") for k, v in load_file(f).items()}
    assert torch.equal(saved["weight"], second.weight.detach())


def _checkpoint_dir(tmp_path):
    for d in ("model-0001", "model-0002", ".model-0003.tmp-123"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "junk").write_bytes(b"x")
    (tmp_path / "model-notes").write_text("a file, not a model directory")
    (tmp_path / "state.json").write_text("{}")
    return tmp_path


# Old model directories and temporaries go; the kept model, other files and the state stay.
def test_prune_old_models_keeps_only_the_named_model(tmp_path):
    ckpt.prune_old_models(_checkpoint_dir(tmp_path), "model-0002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-0002", "model-notes", "state.json"]
    assert (tmp_path / "model-0002" / "junk").exists()


# Removing old models is best effort: the new checkpoint is already written, so a file that
# cannot be deleted must not fail the run.
def test_prune_old_models_ignores_undeletable_files(tmp_path, monkeypatch):
    real = os.unlink

    def unlink(p, *a, **k):
        if os.path.basename(p) == "junk":
            raise PermissionError(p)
        return real(p, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    ckpt.prune_old_models(_checkpoint_dir(tmp_path), "model-0002")  # no error


# The version error and each field check's message name the file and what is wrong.
@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "has version 2; this mpruner reads version 1"),
    ({"history": None}, "has an invalid 'history': None"),
    ({"stop_reason": ["x" * 70]}, "has an invalid 'stop_reason': ['" + "x" * 58 + "..."),
    # a repr of exactly 60 characters is shown whole, one of 61 cut
    ({"stop_reason": ["x" * 56]}, "has an invalid 'stop_reason': ['" + "x" * 56 + "']"),
    ({"stop_reason": ["x" * 57]}, "has an invalid 'stop_reason': ['" + "x" * 57 + "'..."),
    ({"metric_before": float("inf")}, "has a non-finite 'metric_before'"),
    ({"metric_current": float("nan")}, "has a non-finite 'metric_current'"),
    ({"model_dir": "model-0002"}, "names the model directory 'model-0002', which does not exist"),
])
def test_validate_state_messages(tmp_path, change, message):
    with pytest.raises(ValueError) as info:
        ckpt.validate_state(tmp_path / ckpt.STATE, _state(tmp_path, **change))
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: {message}; this checkpoint is damaged")


# The same for a missing field (each field in STATE_FIELDS is required).
def test_validate_state_names_a_missing_field(tmp_path):
    state = _state(tmp_path)
    del state["excluded"]
    with pytest.raises(ValueError, match=r"state.json: has no 'excluded'; this checkpoint is damaged"):
        ckpt.validate_state(tmp_path / ckpt.STATE, state)


# Each refusal of a checkpoint directory names the directory and the parent that blocks it.
def test_check_directory_messages(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(ValueError) as info:
        ckpt.check_directory(f)
    assert str(info.value) == f"checkpoint_dir {str(f)!r} is an existing file, not a directory"
    with pytest.raises(ValueError) as info:
        ckpt.check_directory(f / "sub")
    assert str(info.value) == f"checkpoint_dir {str(f / 'sub')!r} cannot be created: {str(f)!r} is a file"
    monkeypatch.setattr(ckpt.os, "access", lambda *a: False)  # root may write anywhere: pretend not
    with pytest.raises(ValueError) as info:
        ckpt.check_directory(tmp_path / "new" / "dir")
    assert str(info.value) == (f"checkpoint_dir {str(tmp_path / 'new' / 'dir')!r} cannot be created: "
                               f"{str(tmp_path)!r} is not writable")


# A state.json that is a directory is refused naming it.
def test_read_state_of_a_directory(tmp_path):
    (tmp_path / ckpt.STATE).mkdir()
    with pytest.raises(ValueError) as info:
        ckpt.read_state(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: is not a file; this checkpoint is damaged")


# state.json is read as UTF-8, not in the locale's encoding: a state holding UTF-8 text (a stop
# reason naming a non-ASCII path, written by another tool) is read whatever the locale.
def test_read_state_reads_utf8_under_any_locale(tmp_path, ascii_locale):
    state = _state(tmp_path, stop_reason="stopped at /données")
    (tmp_path / ckpt.STATE).write_bytes(json.dumps(state, ensure_ascii=False).encode("utf-8"))
    assert ckpt.read_state(tmp_path)["stop_reason"] == "stopped at /données"


# A state of exactly MAX_STATE_BYTES is read (then refused for its content); one byte more is
# refused for its size, naming the file.
def test_read_state_size_limit(tmp_path, monkeypatch):
    body = '{"version": 2}'
    (tmp_path / ckpt.STATE).write_text(body)
    monkeypatch.setattr(ckpt, "MAX_STATE_BYTES", len(body))
    with pytest.raises(ValueError, match="has version 2"):
        ckpt.read_state(tmp_path)
    monkeypatch.setattr(ckpt, "MAX_STATE_BYTES", len(body) - 1)
    with pytest.raises(ValueError) as info:
        ckpt.read_state(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: is {len(body)} bytes, more than a state can be "
                                      f"({len(body) - 1}); ")



# Invalid JSON: the error names the file, the exception type and its first 80 characters.
@pytest.mark.parametrize("body", ["{", "[" * 100000])  # bad JSON; nesting deeper than the parser goes
def test_read_state_of_invalid_json(tmp_path, body):
    (tmp_path / ckpt.STATE).write_text(body)
    try:
        json.loads(body)
    except (ValueError, RecursionError) as e:
        err = e
    text = str(err)
    with pytest.raises(ValueError) as info:
        ckpt.read_state(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: is not valid JSON ({type(err).__name__}: "
                                      f"{text[:80]}); ")
    assert body == "{" or len(text) > 80  # the recursion message is long enough to be cut




# A checkpoint's history entry may lack "seconds" (older states), but a missing or an extra
# field is refused naming the file, the entry and the fields.
def test_history_entry_fields_checked(tmp_path):
    from dataclasses import asdict

    from mpruner.prune.loop import Iteration

    model, train, _ = prune_job.build()
    p = mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", progress=False,
                        checkpoint_dir=tmp_path)
    h = asdict(Iteration(1, 2, 0.9, ["a"], [[1.0]], [[0]], [], [], 1, 1, 0.8, True))
    assert p._iteration({k: v for k, v in h.items() if k != "seconds"}, 0).seconds == {}
    for bad in ({k: v for k, v in h.items() if k != "metric"}, {**h, "extra": 1}):
        with pytest.raises(ValueError) as info:
            p._iteration(bad, 3)
        assert str(info.value) == (f"{tmp_path / 'state.json'}: history[3] has fields {sorted(bad)}, expected "
                                   f"{sorted(h)}; the checkpoint is damaged or from another mpruner")


def _resume_job():
    """The job the resume tests run (tests/helpers/prune_job.py)."""
    return prune_job


# Resuming (MPruner._load): the "no checkpoint" warning points at the caller's line; a resume
# with other options names the checkpoint directory; the checkpoint loads into a deep copy, so
# the caller's weights are never overwritten; and a resumed run keeps its model directory, so a
# second resume finds the model too.
def test_resume_leaves_the_callers_model_and_keeps_its_model_dir(tmp_path):
    import warnings

    job = _resume_job()
    model, train, evald = job.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(evaluate=lambda m: job.accuracy(m, evald), layers="blocks", threshold=0.95, tolerance=0.05,
              view="flatten", checkpoint_dir=tmp_path / "ck", progress=False, max_iterations=1)
    calib = [x for x, _ in train]
    first = mpruner.MPruner(model, calib, **kw).run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mpruner.MPruner(model, calib, **{**kw, "checkpoint_dir": tmp_path / "empty"}).run(resume=True)
    mine = [w for w in caught if "no checkpoint in" in str(w.message)]
    assert mine and warned_at_caller(mine[0], __file__)  # stacklevel: the caller's line
    for _ in range(2):  # resumed twice: the second resume still finds the model the first recorded
        again = mpruner.MPruner(model, calib, **kw).run(resume=True)
        assert again.layers_after == first.layers_after and again.metric_after == first.metric_after
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError) as info:
        mpruner.MPruner(model, calib, **{**kw, "threshold": 0.9}).run(resume=True)
    assert str(tmp_path / "ck") in str(info.value)


# A resumed run records its model directory in its next state.json, and a damaged history
# entry's error gives the entry's index.
def test_resumed_run_records_its_model_and_names_a_damaged_entry(tmp_path):
    job = _resume_job()
    model, train, evald = job.build()
    kw = dict(evaluate=lambda m: job.accuracy(m, evald), layers="blocks", threshold=0.95, tolerance=0.05,
              view="flatten", checkpoint_dir=tmp_path / "ck", progress=False, max_iterations=3)
    calib = [x for x, _ in train]
    mpruner.MPruner(model, calib, **kw).step()  # one attempt saved, the run not finished
    mpruner.MPruner(model, calib, **kw).run(resume=True)
    state = ckpt.read_state(tmp_path / "ck")
    assert isinstance(state["model_dir"], str) and (tmp_path / "ck" / state["model_dir"]).is_dir()
    path = tmp_path / "ck" / "state.json"
    raw = json.loads(path.read_text())
    raw["history"][-1]["unexpected"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=rf"history\[{len(raw['history']) - 1}\] has fields"):
        mpruner.MPruner(model, calib, **kw).run(resume=True)


@pytest.mark.parametrize("change", [{"max_iterations": 1}, {"threshold": 0.9}, {"tolerance": 0.2}])
def test_resume_with_other_options_is_refused_naming_them(tmp_path, change):
    model, train, evald = prune_job.build()
    base = dict(layers="blocks", threshold=0.95, tolerance=0.05, view="flatten", progress=False,
                checkpoint_dir=tmp_path, max_iterations=3)
    mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, **base).run()
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"other options \({key}: .* in the checkpoint, .* now\)"):
        mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, **{**base, **change}).run(resume=True)


def _job(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, JOB, str(tmp_path / f"ckpt-{name}"),
                           str(out), *extra], capture_output=True, text=True)
    return proc, out


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    proc, ref_out = _job(tmp_path, "ref")
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(ref_out.read_text())
    assert len(ref["summary"]["history"]) >= 2

    # Killed during the 3rd evaluation: the original's, attempt 0's, then mid attempt 1.
    proc, _ = _job(tmp_path, "run", "--kill-at", "3")
    assert proc.returncode == -9
    state = json.loads((tmp_path / "ckpt-run" / "state.json").read_text())
    assert state["iteration"] == 1 and not state["done"]
    proc, out = subprocess.run([sys.executable, JOB, str(tmp_path / "ckpt-run"),
                                str(tmp_path / "resumed.json"), "--resume"], capture_output=True, text=True), None
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "resumed.json").read_text())
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
    hist = lambda s: [{k: v for k, v in h.items() if k != "seconds"} for h in s["history"]]  # noqa: E731
    assert hist(got["summary"]) == hist(ref["summary"])
    assert {k: v for k, v in strip(got["summary"]).items() if k != "history"} == \
        {k: v for k, v in strip(ref["summary"]).items() if k != "history"}
    assert got["weights"] == ref["weights"]


# A resumed run says where it resumes.
@pytest.mark.filterwarnings(ADAPTER_GUESS)
def test_resume_says_where(job, tmp_path, capsys):
    kw = dict(evaluate=_blocks_metric, tolerance=0.035, max_iterations=2, checkpoint_dir=tmp_path)
    _pruner(job, verbose=False, **kw).run()
    _pruner(job, verbose=True, **kw).run(resume=True)
    assert capsys.readouterr().out.splitlines() == ["mpruner: resumed at attempt 2 (k=2, 5 layers)"]  # already done


# The checkpoint is loaded into a deep copy of the caller's model: load_pruned replays removals
# in place and loads the fine-tuned weights into the copy, so a shallow copy would cut the
# caller's blocks and overwrite its tensors. After a resume the caller's model has every block,
# key and value it had.
@pytest.mark.filterwarnings(ADAPTER_GUESS)
def test_resume_leaves_the_callers_model_whole(job, tmp_path):
    def finetune(model):  # changes every weight, so reloaded weights differ from the caller's
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)

    model = job[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(evaluate=_blocks_metric, tolerance=0.035, max_iterations=2, checkpoint_dir=tmp_path,
              finetune=finetune, verbose=False)
    first = _pruner(job, **kw).run()
    assert first.layers_after < 8  # a removal was accepted: the checkpoint holds a pruned, trained model
    again = _pruner(job, **kw).run(resume=True)
    assert again.layers_after == first.layers_after and len(model.blocks) == 8
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


# A checkpoint directory whose parents do not exist yet is created; after each attempt state.json
# names the model directory holding the model of that moment (a new one after an acceptance,
# the same one after a rollback or the stop), and only that one is kept.
@pytest.mark.filterwarnings(ADAPTER_GUESS)
def test_checkpoint_names_the_current_model(job, tmp_path):
    seen = []
    d = tmp_path / "a" / "b"

    def evaluate(model):
        if d.joinpath("state.json").exists():
            state = json.loads(d.joinpath("state.json").read_text())
            seen.append((state["iteration"], state["model_dir"], sorted(p.name for p in d.glob("model-*"))))
            assert not state["done"] and state["stop_reason"] == ""  # _reset_12: no reason before the stop
        return _blocks_metric(model)

    r = _pruner(job, evaluate=evaluate, tolerance=0.035, max_iterations=6, checkpoint_dir=d, verbose=False).run()
    final = json.loads(d.joinpath("state.json").read_text())
    assert [h.accepted for h in r.history] == [False, True, False]
    # the first write (after attempt 0 rolled back) saves the original as model-0001; at attempt 2 the
    # model accepted at attempt 1, saved as model-0002 (the iteration count after it)
    assert seen == [(1, "model-0001", ["model-0001"]), (2, "model-0002", ["model-0002"])]
    assert final["model_dir"] == "model-0002" and sorted(p.name for p in d.glob("model-*")) == ["model-0002"]
    assert final["done"] and final["iteration"] == 3


def test_mpruner_refuses_a_file_as_checkpoint_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="checkpoint_dir .* is an existing file"):
        mpruner.MPruner(model, [torch.randn(8, 4)], lambda m: 0.0, checkpoint_dir=tmp_path / "f")
    with pytest.raises(ValueError, match="cannot be created: .* is a file"):
        mpruner.MPruner(model, [torch.randn(8, 4)], lambda m: 0.0, checkpoint_dir=tmp_path / "f" / "ckpt")


def test_resume_without_checkpoint_warns_in_python(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    pruner = mpruner.MPruner(model, [torch.randn(8, 4)], lambda m: 1.0, threshold=0.999999, progress=False,
                             checkpoint_dir=tmp_path / "ckpt", verbose=False)
    with pytest.warns(UserWarning, match="no checkpoint in .*starting from the beginning"):
        pruner.run(resume=True)

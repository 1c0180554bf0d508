"""Tests that kill mutants which survived benchmarks/mutation_core.sh (mutmut).

Each test names the mutants it kills (mutmut's names, benchmarks/results/reliability/
mutmut_<module>.txt has their diffs). Small and fast: they run in every mutmut pass.
"""
import json

import pytest

from mpruner.prune import checkpoint as ckpt


def _state(tmp_path, **changes):
    """A valid version-1 state.json body whose model directory exists."""
    (tmp_path / "model-0001").mkdir(exist_ok=True)
    state = {"version": 1, "options": {}, "iteration": 0, "granularity": 1, "metric_before": None,
             "metric_current": None, "done": False, "stop_reason": "", "seconds": {}, "model_dir": "model-0001",
             "rejected": [], "excluded": [], "history": []}
    state.update(changes)
    return state


# checkpoint.x__index__mutmut_4 / _5 (i > 0, i >= 1): block 0 is a valid index to exclude or reject.
def test_state_accepts_index_zero(tmp_path):
    state = _state(tmp_path, excluded=[0], rejected=[[0, 2]])
    assert ckpt.validate_state(tmp_path / ckpt.STATE, state) is state


# checkpoint.x__index__mutmut_1 ("... or i >= 0": accepts True and 1.5) and _2
# ("isinstance(i, int) or ...": accepts -1 and True): each is refused naming the field.
@pytest.mark.parametrize("bad", [-1, True, 1.5])
@pytest.mark.parametrize("field", ["excluded", "rejected"])
def test_state_refuses_negative_bool_and_float_indices(tmp_path, bad, field):
    state = _state(tmp_path, **{field: [bad] if field == "excluded" else [[bad]]})
    with pytest.raises(ValueError, match=f"state.json: has an invalid '{field}'"):
        ckpt.validate_state(tmp_path / ckpt.STATE, state)


# checkpoint.x__bad__mutmut_2 / _3 (the advice's text changed): the error tells the user how
# to get out (README "Reliability": refused with the file named, never overwritten).
def test_damaged_state_error_says_what_to_do(tmp_path):
    with pytest.raises(ValueError) as info:
        ckpt.validate_state(tmp_path / ckpt.STATE, [])
    assert str(info.value).endswith("Move it away (or use another checkpoint_dir) to start afresh; "
                                    "mpruner will not overwrite it")


# checkpoint.xǁCheckpointMismatchǁ__init____mutmut_4 (the "; " between options): each
# differing option is listed, separated readably.
def test_checkpoint_mismatch_lists_each_option(tmp_path):
    e = ckpt.CheckpointMismatch(tmp_path, ckpt.option_differences({"a": 1, "b": 2}, {"a": 3, "b": 4}))
    assert "(a: 1 in the checkpoint, 3 now; b: 2 in the checkpoint, 4 now)" in str(e)


# checkpoint.x_write_json_atomic__mutmut_11 (indent=None): state.json stays readable, one
# field a line, and no temporary file is left beside it.
def test_write_json_atomic_is_indented_and_leaves_no_temporary(tmp_path):
    ckpt.write_json_atomic(tmp_path / "s.json", {"a": 1, "b": [2]})
    assert (tmp_path / "s.json").read_text() == json.dumps({"a": 1, "b": [2]}, indent=1)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


# checkpoint.x_read_state_file__mutmut_1 / _2 / _3 (no test in mutmut's selection: only the
# pipeline reads it): None without the file, its JSON with it.
def test_read_state_file(tmp_path):
    assert ckpt.read_state_file(tmp_path / "state.json") is None
    (tmp_path / "state.json").write_text('{"stage": 2}')
    assert ckpt.read_state_file(tmp_path / "state.json") == {"stage": 2}

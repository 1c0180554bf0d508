"""Tests that kill mutants which survived tools/mutation_core.sh (mutmut).

Each test names the mutants it kills (mutmut's names, benchmarks/results/reliability/
mutmut_<module>.txt has their diffs). Small and fast: they run in every mutmut pass.
"""
import json

import pytest
from tests.helpers.caller_frame import warned_at_caller

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
    # checkpoint.x_validate_state__mutmut_2 / _3 / _4: the file, then what is wrong with it
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: holds a list, not a JSON object; ")
    assert str(info.value).endswith("Move it away (or use another checkpoint_dir) to start afresh; "
                                    "mpruner will not overwrite it")


# checkpoint.xǁCheckpointMismatchǁ__init____mutmut_4 (the "; " between options): each
# differing option is listed, separated readably.
def test_checkpoint_mismatch_lists_each_option(tmp_path):
    e = ckpt.CheckpointMismatch(tmp_path, ckpt.option_differences({"a": 1, "b": 2}, {"a": 3, "b": 4}))
    assert "(a: 1 in the checkpoint, 3 now; b: 2 in the checkpoint, 4 now)" in str(e)


# checkpoint.x_option_differences__mutmut_1 / _2 (a None in place of either value) and _4
# (only keys on both sides): an option added or dropped since the checkpoint is a difference.
def test_option_differences_include_options_on_one_side_only():
    assert ckpt.option_differences({"a": 1, "b": 2}, {"b": 2, "c": 3}) == {"a": (1, None), "c": (None, 3)}
    assert ckpt.option_differences({"a": 1}, {"a": 2}) == {"a": (1, 2)}


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


# checkpoint.x_save_model_atomic__mutmut_5 (the stale temporary directory of a killed save is
# not cleared): nothing left in it reaches the model directory.
def test_save_model_atomic_clears_a_stale_temporary(tmp_path):
    import os

    import torch.nn as nn

    stale = tmp_path / f".model-0001.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"half a save")
    ckpt.save_model_atomic(tmp_path, "model-0001", nn.Linear(2, 2))
    assert "junk.bin" not in os.listdir(tmp_path / "model-0001") and not stale.exists()


# checkpoint.x_save_model_atomic__mutmut_14 (an existing model directory not removed first):
# saving under a name already there replaces it.
def test_save_model_atomic_replaces_an_existing_model(tmp_path):
    import torch
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


# checkpoint.x_prune_old_models__mutmut_2 / _3 / _6 / _12 / _13 / _14 (wrong glob patterns,
# rmtree(None)): old models and temporaries go, the kept model, files and state stay.
def test_prune_old_models_keeps_only_the_named_model(tmp_path):
    ckpt.prune_old_models(_checkpoint_dir(tmp_path), "model-0002")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-0002", "model-notes", "state.json"]
    assert (tmp_path / "model-0002" / "junk").exists()


# checkpoint.x_prune_old_models__mutmut_7 / _9 / _10 / _15 (ignore_errors dropped): removing
# old models is best effort; the new checkpoint is already written, so a file that cannot be
# deleted must not fail the run.
def test_prune_old_models_ignores_undeletable_files(tmp_path, monkeypatch):
    import os

    real = os.unlink

    def unlink(p, *a, **k):
        if os.path.basename(p) == "junk":
            raise PermissionError(p)
        return real(p, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    ckpt.prune_old_models(_checkpoint_dir(tmp_path), "model-0002")  # no error


# checkpoint.x_validate_state__mutmut_12..16 (the version error without the file or the
# version), and the field checks' messages after it: each names the file and what is wrong.
@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "has version 2; this mpruner reads version 1"),
    ({"history": None}, "has an invalid 'history': None"),
    ({"stop_reason": ["x" * 70]}, "has an invalid 'stop_reason': ['" + "x" * 58 + "..."),
    # _36 / _37 (>= 60, > 61): a repr of exactly 60 characters is shown whole, one of 61 cut
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


# checkpoint.x_check_directory__mutmut_6 / _7 / _12 / _13 / _14 / _20 / _21 / _22 (messages
# without the directory or the blocking parent): each refusal names both.
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


# checkpoint.x_read_state__mutmut_5..10: a state.json that is a directory is refused naming it.
def test_read_state_of_a_directory(tmp_path):
    (tmp_path / ckpt.STATE).mkdir()
    with pytest.raises(ValueError) as info:
        ckpt.read_state(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / ckpt.STATE}: is not a file; this checkpoint is damaged")


# checkpoint.x_read_state__mutmut_17 / _19 (state.json read in the locale's encoding): a state
# holding UTF-8 text (a stop reason naming a non-ASCII path, written by another tool) is read
# whatever the locale. (_21, "UTF-8" for "utf-8", is equivalent: codec names ignore case.)
def test_read_state_reads_utf8_under_any_locale(tmp_path, ascii_locale):
    state = _state(tmp_path, stop_reason="stopped at /données")
    (tmp_path / ckpt.STATE).write_bytes(json.dumps(state, ensure_ascii=False).encode("utf-8"))
    assert ckpt.read_state(tmp_path)["stop_reason"] == "stopped at /données"


# checkpoint.x_read_state__mutmut_11 / _12 (>= for >, the size error without the file): a
# state of exactly MAX_STATE_BYTES is read (then refused for its content), one byte more is
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


# --- engine/reference.py: the torch reference against the independent float64 NumPy oracle.
# The engine tests compare the C++ ops with the reference; these pin the reference itself, so a
# mutant there cannot pass by a matching change elsewhere.
def _feats(n, seed, widths=(3, 5, 1)):
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return [torch.tanh(base @ torch.randn(2, d, generator=g, dtype=torch.float64))
            + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) + 5.0 for d in widths]


@pytest.mark.parametrize("n", [7, 8])  # odd and even sample counts: the RBF median of n^2 distances
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_matches_numpy(n, kernel, unbiased):
    import numpy as np

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    xs = _feats(n, n)
    for x in xs:
        np.testing.assert_allclose(R.gram(x, kernel).numpy(), NP.gram(x.numpy(), kernel), rtol=0, atol=1e-12)
        k = NP.gram(x.numpy(), kernel)
        np.testing.assert_allclose(R.center_gram(R.gram(x, kernel), unbiased).numpy(), NP.center(k, unbiased),
                                   rtol=0, atol=1e-10)
    want = NP.cka_matrix([x.numpy() for x in xs], kernel, unbiased)
    np.testing.assert_allclose(R.cka_matrix(xs, kernel, unbiased).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(float(R.cka(xs[0], xs[1], kernel, unbiased)), want[0, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.cka_matrix(xs[:1], kernel, unbiased, other=xs[1:]).numpy(), want[:1, 1:],
                               rtol=0, atol=1e-12)
    h = np.array([[NP.hsic(NP.gram(a.numpy(), kernel), NP.gram(b.numpy(), kernel), unbiased) for b in xs] for a in xs])
    np.testing.assert_allclose(R.hsic_matrix(xs, kernel, unbiased).numpy(), h, rtol=1e-12, atol=0)
    # minibatch: per-batch HSICs summed, normalised at the end (two batches: the rows split)
    halves = [[x[:n // 2 + 2] for x in xs], [x[n // 2 - 2:] for x in xs]]
    tot = sum(np.array([[NP.hsic(NP.gram(a.numpy(), kernel), NP.gram(b.numpy(), kernel), unbiased) for b in hb]
                        for a in hb]) for hb in halves)
    d = np.diag(tot)
    np.testing.assert_allclose(R.minibatch_cka(halves, kernel, unbiased).numpy(), tot / np.sqrt(np.outer(d, d)),
                               rtol=0, atol=1e-12)


# reference.gram: sigma is the median's multiplier; a constant layer's RBF Gram is all ones;
# an unknown kernel is refused naming it.
def test_reference_gram_sigma_constant_and_kernel():
    import numpy as np
    import torch

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    x = _feats(6, 3)[0]
    np.testing.assert_allclose(R.gram(x, "rbf", 0.8).numpy(), NP.gram_rbf(x.numpy() - x.numpy().mean(0), 0.8),
                               rtol=0, atol=1e-12)
    assert torch.equal(R.gram(torch.ones(5, 2, dtype=torch.float64), "rbf"), torch.ones(5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernel must be 'linear' or 'rbf', got 'cosine'"):
        R.gram(x, "cosine")


# reference.token_cka / exact_linear_cka: each sequence's real tokens only (a left-padded mask).
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_token_and_exact_cka(unbiased):
    import numpy as np
    import torch

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    hs = [torch.stack([f, f.flip(0)]) for f in _feats(8, 5, widths=(4, 4, 4))]  # (B=2, T=8, D=4) each
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :2] = 0
    got = R.token_cka(hs, mask, unbiased)
    for b in range(2):
        want = NP.cka_matrix([h[b][mask[b].bool()].numpy() for h in hs], "linear", unbiased)
        np.testing.assert_allclose(got[b].numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.token_cka(hs, None, unbiased)[1].numpy(),
                               NP.cka_matrix([h[1].numpy() for h in hs], "linear", unbiased), rtol=0, atol=1e-12)
    xs = [h[0] for h in hs]
    np.testing.assert_allclose(R.exact_linear_cka(xs, unbiased).numpy(),
                               NP.cka_matrix([x.numpy() for x in xs], "linear", unbiased), rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.exact_linear_cka(xs[:1], unbiased, other=xs[1:]).numpy(),
                               NP.cka_matrix([x.numpy() for x in xs], "linear", unbiased)[:1, 1:], rtol=0, atol=1e-12)


# reference.token_cosine: the zero-vector rule (both zero: 1; one zero: 0), the clamp, the
# mask and the last_token view, against a direct NumPy loop.
@pytest.mark.parametrize("view", ["tokens", "last_token"])
def test_reference_token_cosine(view):
    import numpy as np
    import torch

    from mpruner.engine import reference as R

    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(2, 5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    hs[0][0, 1] = 0
    hs[1][0, 1] = 0          # both zero at (0, 1): cosine 1 between layers 0 and 1
    hs[2][1, 2] = 0          # one zero at (1, 2): cosine 0 against it
    hs[2][0, 0] = hs[0][0, 0] * 3  # parallel: cosine 1 (clamped if it rounds above)
    hs[1][0, 0] = hs[0][0, 0] * -3  # antiparallel: rounds to -1 - 2e-16, x_token_cosine__mutmut_71 (clamp at -2)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    cos, ang = R.token_cosine(hs, mask, view)
    toks = [(b, t) for b in range(2) for t in range(5) if mask[b, t]]
    if view == "last_token":
        toks = [(0, 3), (1, 4)]
    want_c, want_a = np.zeros((3, 3)), np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            for b, t in toks:
                u, v = hs[i][b, t].numpy(), hs[j][b, t].numpy()
                nu, nv = u @ u, v @ v
                c = (1.0 if nu == nv == 0 else 0.0) if nu == 0 or nv == 0 else \
                    np.clip(u @ v / np.sqrt(nu * nv), -1, 1)
                want_c[i, j] += c / len(toks)
                want_a[i, j] += np.arccos(c) / np.pi / len(toks)
    np.testing.assert_allclose(cos.numpy(), want_c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ang.numpy(), want_a, rtol=0, atol=1e-12)


# checkpoint.x_read_state__mutmut_25 / _28 / _29 / _30 (the JSON error without its type or
# text, or cut at 81): the error names the file, the exception type and its first 80 characters.
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


# reference defaults (x_center_gram__mutmut_1, x_cka__mutmut_1..3, x_minibatch_cka__mutmut_1..3,
# x_exact_linear_cka__mutmut_1, x_token_cosine__mutmut_1 / _2): linear, biased (minibatch:
# unbiased), the tokens view; and sigma reaching both Grams (x_cka__mutmut_7 / _10 / _13 / _16,
# x_cka_matrix__mutmut_14 / _18, x_minibatch_cka__mutmut_9 / _13).
def test_reference_defaults_and_sigma():
    import numpy as np
    import torch

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    xs = _feats(8, 11)
    x64 = [x.numpy() for x in xs]
    k = R.gram(xs[0])
    np.testing.assert_allclose(R.center_gram(k).numpy(), NP.center(k.numpy(), False), rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(R.cka(xs[0], xs[1])), NP.cka_matrix(x64[:2])[0, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.exact_linear_cka(xs).numpy(), NP.cka_matrix(x64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.minibatch_cka([xs]).numpy(), NP.cka_matrix(x64, "linear", True), rtol=0, atol=1e-12)
    hs = [x.reshape(2, 4, -1) for x in _feats(8, 12, widths=(3, 3))]
    assert all(torch.equal(a, b) for a, b in zip(R.token_cosine(hs), R.token_cosine(hs, torch.ones(2, 4), "tokens")))
    for a, b in [(xs[0], xs[1]), (xs[1], xs[0])]:  # sigma for x's Gram and for y's
        want = NP.cka_matrix([a.numpy(), b.numpy()], "rbf", False, sigma=0.8)[0, 1]
        np.testing.assert_allclose(float(R.cka(a, b, "rbf", False, 0.8)), want, rtol=0, atol=1e-12)
    want = NP.cka_matrix(x64, "rbf", True, sigma=0.8)
    np.testing.assert_allclose(R.cka_matrix(xs, "rbf", True, 0.8).numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(R.minibatch_cka([xs], "rbf", True, 0.8).numpy(), want, rtol=0, atol=1e-12)


# reference.x_center_gram__mutmut_3 (n = k.shape[+1]): a (2, 3, n, n) batch of Grams is
# centred per matrix.
@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_center_gram_4d_batch(unbiased):
    import numpy as np
    import torch

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    ks = torch.stack([R.gram(x) for x in _feats(6, 2, widths=(1, 2, 3, 4, 5, 6))]).reshape(2, 3, 6, 6)
    got = R.center_gram(ks, unbiased)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got[i, j].numpy(), NP.center(ks[i, j].numpy(), unbiased), rtol=0, atol=1e-10)


# reference.x_hsic__mutmut_1 and x_hsic_matrix__mutmut_1..3 (defaults: linear, biased) and
# x_hsic_matrix__mutmut_19 (grams[1].dtype: fails for a single layer).
def test_reference_hsic_defaults_and_one_layer():
    import numpy as np

    from tests.helpers import np_reference as NP
    from mpruner.engine import reference as R

    xs = _feats(7, 4)
    k, l = R.gram(xs[0]), R.gram(xs[1])
    np.testing.assert_allclose(float(R.hsic(k, l)), NP.hsic(k.numpy(), l.numpy(), False), rtol=1e-12, atol=0)
    want = np.array([[NP.hsic(NP.gram(a.numpy()), NP.gram(b.numpy()), False) for b in xs] for a in xs])
    np.testing.assert_allclose(R.hsic_matrix(xs).numpy(), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(R.hsic_matrix(xs[:1]).numpy(), want[:1, :1], rtol=1e-12, atol=0)


# --- prune/loop.py
# xǁMPrunerǁ_options__mutmut_1..32 (a key renamed, a condition flipped): survived because a run
# writes and compares its own spelling. The options are state.json's format: a checkpoint
# written before must still resume, so the keys and when they appear are pinned.
def test_loop_options_recorded_in_the_checkpoint():
    import mpruner
    from tests.helpers import prune_job

    model, train, _ = prune_job.build()
    calib = [x for x, _ in train]
    base = {"block_list": "blocks", "threshold": 0.98, "tolerance": 0.01, "tolerance_mode": "absolute",
            "max_granularity": 3, "max_iterations": 10, "view": "mean", "cluster_method": "anchor", "seed": 0}
    p = mpruner.MPruner(model, calib, lambda m: 1.0, layers="blocks", progress=False)
    assert p._options() == base
    p = mpruner.MPruner(model, calib, lambda m: 1.0, layers="blocks", progress=False, higher_is_better=False,
                        select="contiguous", n=1, tolerance_mode="relative", max_granularity=2, seed=3,
                        cluster_method=[m for m in mpruner.prune.cluster.METHODS if m != "anchor"][0])
    assert p._options() == {**base, "view": "tokens", "tolerance_mode": "relative", "max_granularity": 2, "seed": 3,
                            "cluster_method": p.cluster_method, "higher_is_better": False,
                            "select": "contiguous", "n": 1}


# xǁPruneResultǁto_dict__mutmut_1..9 (no test in mutmut's selection: the CLI's JSON report uses
# it): every field but the model, the history as plain dicts.
def test_prune_result_to_dict():
    import json as _json

    import torch.nn as nn

    from mpruner.prune.loop import Iteration, PruneResult

    it = Iteration(1, 2, 0.9, ["a", "b"], [[1.0, 0.5], [0.5, 1.0]], [[0], [1]], [1], ["b"], 2, 1, 0.8, True)
    r = PruneResult(nn.Linear(1, 1), [it], 0.9, 0.8, 2, 1, 10, 5, 0.01, "absolute", "done", {"total": 1.0})
    d = r.to_dict()
    assert "model" not in d and d["history"] == [{**it.__dict__}] and d["metric_after"] == 0.8
    assert set(d) == {f for f in PruneResult.__dataclass_fields__ if f != "model"}
    _json.dumps(d)  # plain JSON


# xǁMPrunerǁ_iteration__mutmut_3 / _7 / _8 / _9 / _12..14: a checkpoint's history entry may
# lack "seconds" (older states), but a missing or an extra field is refused naming the file,
# the entry and the fields.
def test_history_entry_fields_checked(tmp_path):
    from dataclasses import asdict

    import mpruner
    from tests.helpers import prune_job
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


# --- engine/cka.py: the public functions' input errors, word for word (x_gram, x__check_gram,
# x_center_gram, x_hsic, x_cka, x_nonfinite_error mutants that drop or garble a name, a shape,
# the estimator or the advice in a message, or move a bound by one).
@pytest.mark.parametrize("call, error, message", [
    (lambda m, t: m.gram(t.randn(5, 3), "cosine"), ValueError, "kernel must be one of 'linear', 'rbf'; got 'cosine'"),
    (lambda m, t: m.gram(t.randn(5), batched=True), ValueError,
     "with batched=True, x must be a tensor of shape (b, n, ...)"),
    (lambda m, t: m.gram(t.randn(1, 3), "rbf"), ValueError, "x has n=1 samples; the RBF kernel needs n >= 2"),
    (lambda m, t: m.center_gram([[1.0]]), TypeError, "k must be a torch.Tensor Gram matrix (…, n, n), got list"),
    (lambda m, t: m.center_gram(t.ones(3, 3, dtype=t.long)), TypeError,
     "k has dtype torch.int64; pass a floating-point Gram (k.float())"),
    (lambda m, t: m.center_gram(t.ones(3, 4)), ValueError,
     "k must be square in its last two dimensions (…, n, n), got shape (3, 4)"),
    (lambda m, t: m.center_gram(t.ones(2, 3, 4)), ValueError,
     "k must be square in its last two dimensions (…, n, n), got shape (2, 3, 4)"),
    (lambda m, t: m.center_gram(t.ones(3, 3), True), ValueError,
     "k is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.center_gram(t.ones(1, 1)), ValueError, "k is 1x1; the biased estimator needs n >= 2"),
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(5, 5)), ValueError, "k and l must have the same shape, got (4, 4) and (5, 5)"),
    (lambda m, t: m.hsic(t.ones(3, 3), t.ones(3, 3), True), ValueError,
     "k is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(1, 1)), ValueError, "l is 1x1; the biased estimator needs n >= 2"),
    # x_hsic__mutmut_14 (l checked as biased): l's own estimator bound comes before the shape check
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(3, 3), True), ValueError,
     "l is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.hsic(t.ones(4, 4), [[1.0]]), TypeError, "l must be a torch.Tensor Gram matrix (…, n, n), got list"),
    (lambda m, t: m.cka([t.ones(4, 2)], t.ones(4, 2)), TypeError,
     "cka compares two tensors x and y; for lists of layers use mpruner.cka_matrix"),
    (lambda m, t: m.cka(t.ones(4, 2), [t.ones(4, 2)]), TypeError,
     "cka compares two tensors x and y; for lists of layers use mpruner.cka_matrix"),
])
def test_cka_api_errors_word_for_word(call, error, message):
    import torch

    import mpruner

    with pytest.raises(error) as info:
        call(mpruner, torch)
    assert str(info.value) == message


# cka.x_gram (bounds): a (b, n) batch is b sets of n one-feature samples; RBF takes n = 2.
# cka.x__check_gram (half Grams computed in float32), cka.x_hsic / x_cka (defaults: biased),
# the batched hsic's dtype promotion, x_nonfinite_error (the listed layers, batch, no suffix).
def test_cka_api_edges():
    import torch

    import mpruner
    from mpruner.engine import reference as R
    from mpruner.engine.cka import nonfinite_error

    x = torch.randn(2, 5, dtype=torch.float64)
    g = mpruner.gram(x, batched=True)
    assert g.shape == (2, 5, 5) and torch.allclose(g[1], R.gram(x[1][:, None]), rtol=0, atol=1e-12)
    assert mpruner.gram(torch.randn(2, 3), "rbf").shape == (2, 2)
    # x__check_gram__mutmut_19 (n <= the minimum): n = 4 (unbiased) and n = 2 (biased) are enough
    assert mpruner.center_gram(torch.eye(4), True).shape == (4, 4) and mpruner.center_gram(torch.eye(2)).shape == (2, 2)
    k = mpruner.gram(torch.randn(6, 3, dtype=torch.float64))
    assert mpruner.center_gram(k.half()).dtype == torch.float32
    l = mpruner.gram(torch.randn(6, 3, dtype=torch.float64))
    assert abs(float(mpruner.hsic(k, l)) - float(R.hsic(k, l, False))) < 1e-12
    kb = torch.stack([k, l])  # batched, mixed float32/float64: computed in float64
    h = mpruner.hsic(kb.float(), kb.flip(0))
    assert h.dtype == torch.float64 and torch.allclose(h, torch.stack([R.hsic(k.float().double(), l, False),
                                                                       R.hsic(l.float().double(), k, False)]),
                                                       rtol=1e-6, atol=0)
    xs = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    assert abs(float(mpruner.cka(*xs)) - float(R.cka(*xs))) < 1e-12
    e = nonfinite_error([0, 2], ["a", "b", "c"], batch=3)
    assert e.layers == ["a", "c"] and e.batch == 3 and str(e).startswith("NaN or Inf in the activations of a, c; fix")
    assert str(e).endswith("or with CKAAccumulator pass nan_policy='skip' to drop such batches")


# cka.x_gram__mutmut_29/36/39/40: the argument names in gram's input errors ("x", "x[i]").
# cka.x__check_gram__mutmut_17 and x_hsic__mutmut_32 (n from shape[+1]): a 4-d Gram batch,
# where shape[1] is not n. (x__check_gram__mutmut_18 and x_hsic__mutmut_33, shape[-2], are
# equivalent: the Grams are checked square first.)
def test_gram_names_and_4d_gram_batches():
    import torch

    import mpruner
    from mpruner.engine import reference as R

    with pytest.raises(TypeError) as info:
        mpruner.gram(torch.ones(4, 3, dtype=torch.long))
    assert str(info.value) == "x has dtype torch.int64; CKA needs floating-point activations: pass x.float()"
    with pytest.raises(TypeError) as info:
        mpruner.gram(torch.ones(2, 4, 3, dtype=torch.long), batched=True)
    assert str(info.value) == "x[0] has dtype torch.int64; CKA needs floating-point activations: pass x[0].float()"
    g = torch.stack([mpruner.gram(torch.randn(5, 3, dtype=torch.float64)) for _ in range(6)]).reshape(2, 3, 5, 5)
    c = mpruner.center_gram(g, True)  # n = 5 >= 4; shape[1] = 3 would refuse
    assert c.shape == (2, 3, 5, 5)
    torch.testing.assert_close(c[1, 2], R.center_gram(g[1, 2], True), rtol=0, atol=1e-12)
    h = mpruner.hsic(g, g.flip(1))
    assert h.shape == (2, 3)
    assert abs(float(h[1, 0]) - float(R.hsic(g[1, 0], g[1, 2], False))) < 1e-12


# surgery/persist.py x__record_for__mutmut_5/6 (the adapter or its block lists lost) and
# _15.._18 (the keys of the record of a model no adapter recognises garbled): the record a
# never-pruned model is saved with, for a recognised and an unrecognised model.
def test_record_of_a_never_pruned_model(tmp_path):
    import torch.nn as nn

    import mpruner
    from mpruner.surgery.persist import adapter_for, read_record

    stack = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
    mpruner.save_pruned(stack, tmp_path / "stack")
    record = read_record(tmp_path / "stack")
    assert record["adapter"] == adapter_for(stack).name and record["adapter"] is not None
    assert record["original"] == {bl.name: len(bl) for bl in mpruner.find_blocks(stack)} and record["steps"] == []

    class Plain(nn.Module):  # no block container: no adapter recognises it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    mpruner.save_pruned(Plain(), tmp_path / "plain")
    record = read_record(tmp_path / "plain")
    assert {k: record[k] for k in ("adapter", "original", "steps")} == {"adapter": None, "original": {}, "steps": []}


# prune/loop.py x_MPruner__plan_strategy__mutmut_2 (remaining = n + removed so far): after one
# block of n=2 is accepted, the next attempt asks for the one block still to go, not three.
def test_strategy_asks_for_what_remains_of_n(tmp_path):
    from tests.helpers.tiny_lms import tiny_lm

    import torch

    import mpruner

    g = torch.Generator().manual_seed(2)
    calib = [{"input_ids": torch.randint(3, 97, (3, 10), generator=g), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
             for _ in range(2)]
    ev = lambda m: 10.0 + 2.0 * (6 - len(m.model.layers))  # noqa: E731 - each removed block costs 2
    result = mpruner.MPruner(tiny_lm("mistral", layers=6), calib, evaluate=ev, select="lowest-influence", n=2,
                             higher_is_better=False, tolerance=0.25, tolerance_mode="relative", progress=False,
                             max_iterations=3).run()
    assert [len(h.removed) for h in result.history] == [2, 1, 1]
    assert [h.accepted for h in result.history] == [False, True, False]


# prune/loop.py x_MPruner__plan_strategy__mutmut_6 (strategies.plan(None, ...): the contiguous
# rule for every select): two identity blocks apart from each other (zero output projections,
# Block Influence 0) are lowest-influence's pick; no contiguous run holds both.
def test_lowest_influence_is_not_a_contiguous_run():
    from tests.helpers.tiny_lms import tiny_lm

    import torch

    import mpruner

    model = tiny_lm("llama", layers=6)
    with torch.no_grad():
        for i in (1, 4):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(3, 97, (3, 10), generator=g), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
             for _ in range(2)]
    result = mpruner.MPruner(model, calib, evaluate=lambda m: 1.0, select="lowest-influence", n=2,
                             progress=False).run()
    assert result.history[0].removed == [1, 4] and result.layers_after == 4


# prune/loop.py _load: x_MPruner__load__mutmut_12/13 (the warning's stacklevel: it must point at
# the caller's line), _21 (the mismatch error without the checkpoint directory), _35 (a shallow
# copy of the caller's model as the factory: loading the checkpoint would overwrite its weights),
# _36 (the resumed run forgets its model directory: the next resume cannot find the model).
# (_4, `is_main or True`, is equivalent in one process; _8 and _11, the category None or left
# out, are UserWarning all the same.)
def _resume_job():
    from tests.helpers import prune_job

    return prune_job


def test_resume_leaves_the_callers_model_and_keeps_its_model_dir(tmp_path):
    import warnings

    import torch

    import mpruner

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


# prune/loop.py x_MPruner__load__mutmut_36 (a resumed run forgets its model directory, and
# its next state.json names none) and _65 (a damaged history entry's error without its index).
def test_resumed_run_records_its_model_and_names_a_damaged_entry(tmp_path):
    import json

    import mpruner
    from mpruner.prune import checkpoint as ckpt

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

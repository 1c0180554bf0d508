"""Healing checkpoints (mpruner/training/healing_state.py): a call interrupted by Ctrl-C saves the
finished step and a new call continues it to the uninterrupted result, bitwise; a changed recipe
is refused by name; another model's or a damaged state is not resumed; the file goes at the end.
(The SIGKILL cases run through the pruning loop in tests/test_faults.py.)"""
import copy
import os
import signal

import pytest
import torch

import mpruner
from mpruner.training.healing_state import FILE, RecipeMismatch
from tests.helpers.tiny_lms import VOCAB, tiny_lm


def _batches(n=6):
    g = torch.Generator().manual_seed(4)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (2, 8), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def _tuner(d, **kw):
    options = dict(lr=1e-2, progress=False, checkpoint_dir=d, checkpoint_every=1e9, seed=3)
    options.update(kw)
    return mpruner.Finetuner(_batches(), **options)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def uninterrupted(tmp_path):
    model = tiny_lm("llama", layers=2)
    _tuner(tmp_path / "ref")(model)
    return _state(model)


def test_ctrl_c_saves_the_finished_step_and_a_new_call_continues_it(tmp_path, uninterrupted):
    start = tiny_lm("llama", layers=2)
    model = copy.deepcopy(start)
    calls = {"n": 0}

    def ctrl_c_at_step_2(m):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return 0.0

    with pytest.raises(KeyboardInterrupt, match="after step 2"):
        _tuner(tmp_path, eval_every=1, eval_fn=ctrl_c_at_step_2)(model)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    saved = torch.load(tmp_path / FILE, weights_only=True)
    assert saved["progress"]["step"] == 2 and saved["progress"]["tokens"] == 32
    again = copy.deepcopy(start)  # the attempt starts again from the same model
    _tuner(tmp_path)(again)
    assert all(torch.equal(v, uninterrupted[k]) for k, v in again.state_dict().items())
    assert not (tmp_path / FILE).exists()


def test_a_changed_recipe_is_refused_naming_the_option(tmp_path):
    start = tiny_lm("llama", layers=2)
    model = copy.deepcopy(start)
    with pytest.raises(KeyboardInterrupt):
        _tuner(tmp_path, eval_every=1, eval_fn=lambda m: os.kill(os.getpid(), signal.SIGINT) or 0.0)(model)
    with pytest.raises(RecipeMismatch, match=r"lr=0\.01 there, 0\.02 now.*delete .*healing\.pt"):
        _tuner(tmp_path, lr=2e-2)(copy.deepcopy(start))
    assert (tmp_path / FILE).exists()  # the user's saved state is kept


def test_another_models_state_is_not_resumed(tmp_path, uninterrupted):
    other = tiny_lm("llama", layers=2, seed=9)
    with pytest.raises(KeyboardInterrupt):
        _tuner(tmp_path, eval_every=1, eval_fn=lambda m: os.kill(os.getpid(), signal.SIGINT) or 0.0)(other)
    model = tiny_lm("llama", layers=2)
    _tuner(tmp_path)(model)  # starts fresh: the state is another model's
    assert all(torch.equal(v, uninterrupted[k]) for k, v in model.state_dict().items())


def test_a_damaged_state_is_reported_and_healing_starts_over(tmp_path, uninterrupted):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / FILE).write_bytes(b"not a checkpoint")
    model = tiny_lm("llama", layers=2)
    with pytest.warns(RuntimeWarning, match="could not be read.*starts over"):
        _tuner(tmp_path)(model)
    assert all(torch.equal(v, uninterrupted[k]) for k, v in model.state_dict().items())


def test_periodic_state_is_written_every_checkpoint_every_seconds(tmp_path):
    seen = []

    def look(m):
        seen.append((tmp_path / FILE).exists())
        return 0.0

    _tuner(tmp_path, checkpoint_every=0.0, eval_every=1, eval_fn=look)(tiny_lm("llama", layers=2))
    assert seen == [False] + [True] * 5  # written after each step (the check runs before the write)
    assert not (tmp_path / FILE).exists()
    seen.clear()
    _tuner(tmp_path, checkpoint_every=1e9, eval_every=1, eval_fn=look)(tiny_lm("llama", layers=2))
    assert seen == [False] * 6


def test_checkpoint_every_must_be_seconds():
    with pytest.raises(ValueError, match="checkpoint_every must be a number of seconds >= 0"):
        mpruner.Finetuner([], checkpoint_every=-1)

"""The pruning loop with a lower-is-better metric (perplexity) and the LLM selection strategies."""
import pytest
import torch

import mpruner

from _tiny_lms import tiny_lm


def _pruner(**kw):
    model = tiny_lm("llama", layers=4)
    batches = [{"input_ids": torch.randint(3, 97, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    return mpruner.MPruner(model, batches, evaluate=lambda m: 0.0, progress=False, **kw)


@pytest.mark.parametrize("mode, before, ok, bad", [
    ("relative", 10.0, 11.0, 11.01),   # ppl may rise by 10%
    ("absolute", 10.0, 10.1, 10.11),   # ... or by 0.1
])
def test_lower_is_better_tolerance(mode, before, ok, bad):
    tol = 0.1
    p = _pruner(tolerance=tol, tolerance_mode=mode, higher_is_better=False)
    p.metric_before = before
    assert p.accepts(ok) and p.accepts(before * 0.5) and not p.accepts(bad) and not p.accepts(float("nan"))
    assert p._options()["higher_is_better"] is False
    assert "higher_is_better" not in _pruner()._options()  # default runs keep their checkpoint options


def test_higher_is_better_default_unchanged():
    p = _pruner(tolerance=0.1, tolerance_mode="relative")
    p.metric_before = 0.8
    assert p.accepts(0.73) and not p.accepts(0.71)
    with pytest.raises(TypeError, match="higher_is_better"):
        _pruner(higher_is_better="min")

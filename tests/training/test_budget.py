"""A healing budget in tokens (mpruner/training/budget.py): the count syntax, training that stops
after the step reaching the budget, a schedule that spans it, a bar counting tokens, the curve of
eval_fn against tokens, and the refusals."""
import pytest
import torch

import mpruner
from mpruner.training.budget import batch_tokens, parse_tokens
from tests.helpers.tiny_lms import VOCAB, tiny_lm


def _batches(real=(10, 10, 10, 10, 10), T=12):
    """One sequence per batch with ``real`` real tokens each (right padding)."""
    g = torch.Generator().manual_seed(2)
    out = []
    for r in real:
        ids = torch.randint(3, VOCAB, (1, T), generator=g)
        mask = torch.zeros(1, T, dtype=torch.long)
        mask[0, :r] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


@pytest.mark.parametrize("text,value", [("300k", 300_000), ("1.5M", 1_500_000), ("4096", 4096), (4096, 4096),
                                        ("2G", 2_000_000_000), (" 12 k ", 12_000)])
def test_token_counts_read_with_suffixes(text, value):
    assert parse_tokens(text) == value


@pytest.mark.parametrize("bad", ["abc", "0", "-5k", "1.5x", "", True])
def test_bad_token_counts(bad):
    with pytest.raises(ValueError, match="token count"):
        parse_tokens(bad)


def test_batch_tokens_count_the_mask_or_every_id():
    assert batch_tokens(_batches((7,))[0]) == 7
    assert batch_tokens({"input_ids": torch.zeros(2, 5, dtype=torch.long)}) == 10
    assert batch_tokens((torch.zeros(2, 3), torch.zeros(2))) is None


def _lrs():
    seen = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda opt, a, k: seen.append(opt.param_groups[0]["lr"]))
    return seen, handle


def test_training_stops_after_the_step_that_reaches_the_budget_and_the_schedule_spans_it():
    seen, handle = _lrs()
    try:
        tuner = mpruner.Finetuner(_batches(), lr=0.1, warmup=0.0, progress=False, max_tokens=25, eval_every=1,
                                  eval_fn=lambda m: 0.0)
        tuner(tiny_lm("llama", layers=2))
    finally:
        handle.remove()
    # 10 real tokens a step: 3 steps reach 25; the schedule decays over those 3, not the 5 batches
    assert [p["tokens"] for p in tuner.curve] == [10, 20, 30]
    assert seen == pytest.approx([0.1, 0.1, 0.05])  # over 5 steps the third would be 0.075


def test_the_curve_records_eval_fn_each_time_the_tokens_pass_a_multiple():
    values = iter(range(100))
    tuner = mpruner.Finetuner(_batches((6, 6, 6, 6, 6)), lr=1e-3, progress=False, eval_every=10,
                              eval_fn=lambda m: float(next(values)) if not m.training else -1.0)
    tuner(tiny_lm("llama", layers=2))
    assert [(p["tokens"], p["step"], p["metric"]) for p in tuner.curve] == [(12, 2, 0.0), (24, 4, 1.0), (30, 5, 2.0)]


def test_the_bar_counts_tokens(capsys):
    mpruner.Finetuner(_batches(), lr=1e-3, progress=True, max_tokens=30)(tiny_lm("llama", layers=2))
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if f.startswith("heal")]
    # a bar over the 30-token budget in tokens (how many frames tqdm draws depends on the speed)
    assert frames and all("/30.0" in f and "tok/s" in f for f in frames), frames


def test_a_budget_below_one_step_or_without_tokens_is_refused_before_training():
    model = tiny_lm("llama", layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="max_tokens=5 is below one optimizer step's 10 tokens"):
        mpruner.Finetuner(_batches(), progress=False, max_tokens=5)(model)
    with pytest.raises(ValueError, match="max_tokens counts real tokens"):
        mpruner.Finetuner([(torch.randn(2, 4), torch.tensor([0, 1]))], progress=False,
                          max_tokens=100)(torch.nn.Linear(4, 2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="eval_every .* and eval_fn .* go together"):
        mpruner.Finetuner([], eval_every=10)

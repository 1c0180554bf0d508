"""Recovery fine-tuning (mpruner/training/finetune.py): Finetuner's options, mixed precision in
one process, and its progress bar."""
import copy

import pytest
import torch

import mpruner
from tests.helpers.training_data import batches, net


def test_finetune_bar_draws_each_step_once(capsys):
    from mpruner.training import Finetuner

    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    Finetuner(data, epochs=1, progress=True)(model)
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if "fine-tune" in f and "loss=" in f]
    steps = [f.split("|")[-1].split("[")[0] for f in frames]  # " 1/3 ", " 2/3 ", ...
    assert len(steps) == len(set(steps)), f"a step was drawn more than once: {frames}"


def test_amp_on_and_off_in_one_process_leave_the_model_as_it_was():
    data = [(x.float(), y) for x, y in batches((8, 8))]
    model = net().float()
    mpruner.Finetuner(data, amp=True, progress=False)(model)   # bfloat16 autocast on the CPU
    assert "forward" not in vars(model) and "_original_forward" not in vars(model)
    mpruner.Finetuner(data, amp=False, progress=False)(model)  # another precision in the same process
    assert all(p.dtype == torch.float32 for p in model.parameters())
    copy.deepcopy(model)(data[0][0])


def test_bad_options():
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be an integer >= 1"):
        mpruner.Finetuner([], gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match="amp must be 'auto', True, False or one of"):
        mpruner.Finetuner([], amp="fp8")

"""Recovery fine-tuning (mpruner/training/finetune.py): Finetuner's options and progress bar."""
import torch


def test_finetune_bar_draws_each_step_once(capsys):
    from mpruner.training import Finetuner

    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    Finetuner(data, epochs=1, progress=True)(model)
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if "fine-tune" in f and "loss=" in f]
    steps = [f.split("|")[-1].split("[")[0] for f in frames]  # " 1/3 ", " 2/3 ", ...
    assert len(steps) == len(set(steps)), f"a step was drawn more than once: {frames}"

"""A pruning run's outputs (mpruner/prune/outputs.py): the report, the model, its tokenizer."""
import os

import torch


def test_report_saves_the_tokenizer_beside_the_model(tmp_path):
    import mpruner
    from mpruner.prune.outputs import write_report

    class Tokenizer:
        def save_pretrained(self, path):
            os.makedirs(path, exist_ok=True)
            open(os.path.join(path, "tokenizer.json"), "w").write("{}")

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    result = mpruner.MPruner(model, [torch.randn(8, 4)], lambda m: 1.0, threshold=0.999999, progress=False,
                             verbose=False).run()
    summary = write_report(result, tmp_path / "out", heatmaps=False, tokenizer=Tokenizer())
    assert (tmp_path / "out" / "model" / "tokenizer.json").is_file() and summary["files"]["tokenizer"] == "model"

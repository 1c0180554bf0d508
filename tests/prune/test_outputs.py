"""A pruning run's outputs (mpruner/prune/outputs.py): the report, the model, its tokenizer, its card."""
import os

import pytest
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


def test_the_model_folder_has_a_card_with_the_summarys_numbers(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    import mpruner
    from mpruner.prune.outputs import recipe, write_report

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(4)])
    with torch.no_grad():  # blocks 1 and 2 the same map: a cluster, and a removal the metric accepts
        model[2].weight.copy_(torch.eye(4))
        model[2].bias.zero_()
    pruner = mpruner.MPruner(model, [torch.randn(16, 4)], lambda m: 0.875, threshold=0.9, progress=False,
                             verbose=False)
    result = pruner.run()
    summary = write_report(result, tmp_path / "out", heatmaps=False, extra={"metric": "a test metric"},
                           card={"recipe": recipe(pruner.options), "command": "mpruner prune ..."})
    data = hub.ModelCard.load(tmp_path / "out" / "model" / "README.md").data.to_dict()["mpruner"]
    for key in ("metric", "metric_before", "metric_after", "layers_before", "layers_after", "params_before",
                "params_after", "tolerance", "tolerance_mode", "removed"):
        assert data[key] == summary[key], key
    assert summary["layers_after"] < summary["layers_before"]
    text = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "mpruner prune ..." in text and "`threshold`: `0.9`" in text

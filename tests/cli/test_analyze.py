"""`mpruner analyze`: factories, layers, errors."""
import textwrap

import pytest

from mpruner.analysis import Analysis
from mpruner.cli import main

PNG = b"\x89PNG\r\n\x1a\n"

FACTORIES = textwrap.dedent("""
    import torch
    import torch.nn as nn

    def model():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)])

    def data():
        g = torch.Generator().manual_seed(1)
        return [torch.randn(10, 8, generator=g) for _ in range(3)]

    not_a_model = 42
""")


def test_cli_with_factories(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "factories.py").write_text(FACTORIES)
    spec = str(tmp_path / "factories.py")
    out = tmp_path / "out"
    assert main(["analyze", "--model", f"{spec}:model", "--data", f"{spec}:data", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    a = Analysis.load(out / "cka.json")
    assert (out / "cka.png").read_bytes()[:8] == PNG
    assert a.cka.shape == (4, 4) and a.num_samples == 30
    assert "adjacent-layer CKA" in printed and "0 -> 1 " in printed
    assert f"{a.adjacent()[2].item():.4f}" in printed

    # Layers as comma-separated module names; the biased estimator.
    assert main(["analyze", "--model", f"{spec}:model", "--data", f"{spec}:data", "--out", str(out),
                 "--layers", "0,2,3", "--biased", "--no-progress"]) == 0
    a = Analysis.load(out / "cka.json")
    assert a.layer_names == ["0", "2", "3"] and a.options["unbiased"] is False


@pytest.mark.parametrize("args, message", [
    (["--model", "{spec}:not_a_model", "--data", "{spec}:data"], "gave a int, not a torch.nn.Module"),
    (["--model", "{spec}:missing", "--data", "{spec}:data"], "has no attribute 'missing'"),
    (["--model", "{tmp}/nowhere", "--data", "{spec}:data"], "neither a directory"),
    (["--model", "{tmp}", "--data", "{spec}:data"], "has no config.json"),
    (["--model", "{spec}:model", "--data", "{tmp}/texts.txt"], "needs a Hugging Face model directory"),
    (["--model", "{spec}:model", "--data", "{spec}:data", "--layers", "nope"], "has no block list or submodule"),
])
def test_cli_errors(tmp_path, capsys, args, message):
    (tmp_path / "factories.py").write_text(FACTORIES)
    (tmp_path / "texts.txt").write_text("a\nb\n")
    spec = str(tmp_path / "factories.py")
    argv = ["analyze"] + [a.format(spec=spec, tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "o"),
                                                                             "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mpruner analyze: error: ") and message in err

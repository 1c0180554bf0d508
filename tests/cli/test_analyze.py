"""`mpruner analyze` (mpruner/cli/analyze.py): module:factory specs, a custom model's only block
container, --layers typos and ambiguous models, --metric angular, errors."""
import json
import os
import textwrap
import warnings

import pytest

from mpruner.analysis import Analysis
from mpruner.cli import main
from tests.helpers.cli import run

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

    # --precision reaches analyze (tf32 is high; it falls back where the CPU lacks bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["analyze", "--model", f"{spec}:model", "--data", f"{spec}:data", "--out", str(out),
                     "--precision", "tf32", "--no-progress"]) == 0
    assert Analysis.load(out / "cka.json").options["precision"] == "high"


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


def test_analyze_custom_model_uses_its_only_block_container(nets, capsys, tmp_path):
    code, out, err = run(capsys, "analyze", "--model", "nets.py:build", "--data", "nets.py:calib",
                         "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 0, err
    assert "Net: 5 layers (blocks)" in out
    assert "no adapter knows Net; using its only nn.Sequential/nn.ModuleList" in out and "'blocks' (5 blocks)" in out
    assert "mpruner analyze: running Net" in out  # a line per stage even with --no-progress


def test_analyze_layers_typo_suggests_and_several_containers_are_listed(nets, capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "--model", "nets.py:build", "--data", "nets.py:calib",
                       "--layers", "blokcs", "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 1 and "--layers 'blokcs'" in err and "did you mean 'blocks'" in err
    with open("nets.py", "a") as f:
        f.write("\nclass Two(Net):\n    def __init__(self):\n        super().__init__()\n"
                "        self.stem = nn.Sequential(nn.Linear(16, 16), nn.Tanh())\n\n"
                "def build_two():\n    return Two()\n")
    code, _, err = run(capsys, "analyze", "--model", "nets.py:build_two", "--data", "nets.py:calib",
                       "--out", str(tmp_path / "b"), "--no-progress")
    assert code == 1
    assert "'blocks' (5 blocks), 'stem' (2 blocks)" in err and "--layers blocks" in err


def test_analyze_angular(lm_dir, tmp_path, capsys):
    rc = main(["analyze", "--model", str(lm_dir), "--data", str(lm_dir / "corpus.txt"), "--metric", "angular",
               "--batch-size", "8", "--out", str(tmp_path / "a"), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "adjacent-layer angular" in printed and "Block Influence" in printed
    data = json.load(open(tmp_path / "a" / "angular.json"))
    assert data["metric"] == "angular" and len(data["cka"]) == 5 and os.path.exists(tmp_path / "a" / "angular.png")

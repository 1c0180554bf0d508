"""Analysis save/load and plot, and the `mpruner analyze` command."""
import json
import textwrap

import pytest
import torch

from mpruner.analysis import Analysis
from mpruner.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def example(cross=False):
    c = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, float("nan")], [0.5, float("nan"), 1.0]], dtype=torch.float64)
    names = ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    if cross:
        return Analysis(c[:, :2], names, 64, {"view": "mean", "model": "BertModel"}, other_layer_names=names[:2])
    return Analysis(c, names, 64, {"view": "mean", "model": "BertModel", "skipped_samples": 3})


def test_save_load_roundtrip_without_pickle(tmp_path):
    a = example()
    a.save(tmp_path / "cka.json")
    raw = json.loads((tmp_path / "cka.json").read_text())
    assert raw["format"] == "mpruner.analysis" and raw["cka"][1][2] is None  # NaN stored as null, strict JSON
    b = Analysis.load(tmp_path / "cka.json")
    assert torch.equal(b.cka.isnan(), a.cka.isnan()) and torch.equal(b.cka.nan_to_num(), a.cka.nan_to_num())
    assert b.layer_names == a.layer_names and b.num_samples == 64 and b.options == a.options
    assert b.num_skipped == 3 and not b.is_cross and b.adjacent().tolist()[0] == 0.9
    c = example(cross=True)
    c.save(tmp_path / "cross.json")
    d = Analysis.load(tmp_path / "cross.json")
    assert d.is_cross and d.cka.shape == (3, 2) and d.other_layer_names == c.other_layer_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cka.json", "cross.json"]  # no temporary files left


def test_load_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Analysis.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an mpruner analysis"):
        Analysis.load(tmp_path / "other.json")
    (tmp_path / "newer.json").write_text('{"format": "mpruner.analysis", "version": 99}')
    with pytest.raises(ValueError, match="newer than this mpruner reads"):
        Analysis.load(tmp_path / "newer.json")
    with pytest.raises(ValueError, match=r"cka has shape \(3, 3\) but there are 2 x 2 layer names"):
        Analysis(torch.eye(3), ["a", "b"], 1)


def test_plot_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    a = example()
    fig = a.plot(tmp_path / "cka.png", clusters=[[0, 1], [2]])
    assert (tmp_path / "cka.png").read_bytes()[:8] == PNG
    heatmap, colorbar = fig.axes
    assert colorbar.get_ylabel() == "CKA"
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["0", "1", "2"]
    assert heatmap.get_ylabel() == "encoder.layer.<i>"
    assert len(heatmap.patches) == 1  # the two-layer cluster is outlined; a single layer is not
    assert sum(t.get_text() == "0.90" for t in heatmap.texts) == 2
    assert example(cross=True).plot(tmp_path / "cross.png").axes[0].get_xlabel() == "other: encoder.layer.<i>"
    for bad, match in [([[0, 2]], "not a run of consecutive"), ([[2, 3]], r"outside 0\.\.2"),
                       ([[0, 1], [1, 2]], "appear in two clusters"), ([["a"]], "lists of layer indices")]:
        with pytest.raises(ValueError, match=match):
            a.plot(None, clusters=bad)
    with pytest.raises(ValueError, match="cross-model"):
        example(cross=True).plot(None, clusters=[[0, 1]])


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

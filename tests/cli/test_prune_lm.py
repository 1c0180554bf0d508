"""`mpruner prune --task causal-lm` and `mpruner analyze --metric angular` on a tiny LLaMA folder."""
import json
import os

import pytest

from mpruner.cli import main

from tests.helpers.tiny_lms import tiny_lm

T = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a of and to in is was for on with as by at from it an be this that which or are".split()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    fast.save_pretrained(d)
    tiny_lm("llama", layers=5).save_pretrained(d)
    corpus = d / "corpus.txt"
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    corpus.write_text("\n".join(lines) + "\n")
    return d


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


def test_analyze_angular(lm_dir, tmp_path, capsys):
    rc = main(["analyze", "--model", str(lm_dir), "--data", str(lm_dir / "corpus.txt"), "--metric", "angular",
               "--batch-size", "8", "--out", str(tmp_path / "a"), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "adjacent-layer angular" in printed and "Block Influence" in printed
    data = json.load(open(tmp_path / "a" / "angular.json"))
    assert data["metric"] == "angular" and len(data["cka"]) == 5 and os.path.exists(tmp_path / "a" / "angular.png")

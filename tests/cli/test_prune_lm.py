"""`mpruner prune --task causal-lm` (mpruner/cli/prune_lm.py) on a tiny LLaMA folder."""
import json

import pytest

from mpruner.cli import main
from tests.helpers.lm_blocks import planted

T = transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


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


# ---------------------------------------------------------------- --select <ranking>, --replace linear
PLANTED_WORDS = "the a of and to in is was for on with as by at from it an be this that which or are".split()


@pytest.fixture(scope="module")
def planted_lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted-llama")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(PLANTED_WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(d)
    planted("llama", layers=6).save_pretrained(d)
    lines = [" ".join(PLANTED_WORDS[(i * 7 + j) % len(PLANTED_WORDS)] for j in range(12)) for i in range(40)]
    (d / "corpus.txt").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize("select", ["greedy", "cka"])
def test_cli_select_and_replace(planted_lm_dir, tmp_path, capsys, select):
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(planted_lm_dir), "--task", "causal-lm", "--data", str(planted_lm_dir / "corpus.txt"),
               "--select", select, "--n", "1", "--replace", "linear", "--seq-len", "16", "--batch-size", "4",
               "--tolerance", "10", "--tolerance-mode", "relative", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    summary = json.load(open(out / "summary.json"))
    assert summary["layers_before"] == 6 and summary["layers_after"] == 5
    history = json.load(open(out / "history.json"))
    assert "angular" in history[0] and "score" in history[0] and "cka" not in history[0]  # labelled by metric
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 5


def test_cli_refuses_an_encoder_for_causal_lm_before_loading(tmp_path, capsys):
    config = transformers.BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    d = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(d)
    (tmp_path / "t.txt").write_text("a b c\n" * 20)
    rc = main(["prune", "--model", str(d), "--task", "causal-lm", "--data", str(tmp_path / "t.txt"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "needs a causal (decoder-only) language model" in err and "'bert'" in err

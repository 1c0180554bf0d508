"""The LM block choices through MPruner and ``mpruner prune --task causal-lm``: every ranking
method as --select, --replace linear, an encoder refused before it loads, outputs labelled with
their metric."""
import json
import os
import sys

import pytest
import torch

import mpruner
from mpruner.cli import main

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from test_select import IDENTITY, planted, sampled  # noqa: E402

WORDS = "the a of and to in is was for on with as by at from it an be this that which or are".split()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(d)
    planted("llama", layers=6).save_pretrained(d)
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    (d / "corpus.txt").write_text("\n".join(lines) + "\n")
    return d


def test_mpruner_takes_a_ranking_method_and_linear_replacement():
    model = planted("llama", layers=5)
    data = sampled(model, n=5)  # 320 tokens: the fitted 32 x 32 map has 10 per dimension
    from mpruner.evaluation.loss import causal_lm_nll

    def loss(m):
        total, count = causal_lm_nll(m, data)
        return total / count

    result = mpruner.MPruner(model, data, loss, select="loo", n=1, replace="linear", higher_is_better=False,
                             tolerance=0.5, progress=False, verbose=False).run()
    assert result.history[0].removed == [IDENTITY] and result.history[0].accepted
    assert result.history[0].similarity == "angular" and result.history[0].report()["score"] == \
        result.history[0].threshold
    assert result.layers_after == 4 and result.metric_after == pytest.approx(result.metric_before, abs=1e-6)


def test_replace_is_refused_up_front_for_a_model_without_a_foldable_projection():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="replace='linear' folds .* declares none"):
        mpruner.MPruner(net, [torch.randn(8, 4)], lambda m: 1.0, layers="", replace="linear", select="update", n=1)
    with pytest.raises(ValueError, match="replace must be one of"):
        mpruner.MPruner(net, [torch.randn(8, 4)], lambda m: 1.0, layers="", replace="quadratic")


@pytest.mark.parametrize("select", ["greedy", "cka"])
def test_cli_select_and_replace(lm_dir, tmp_path, capsys, select):
    out = tmp_path / "run"
    rc = main(["prune", "--model", str(lm_dir), "--task", "causal-lm", "--data", str(lm_dir / "corpus.txt"),
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


def test_angular_heatmap_is_labelled_with_its_metric(lm_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from mpruner.analysis.plot import plot_analysis

    model = transformers.AutoModelForCausalLM.from_pretrained(lm_dir)
    data = sampled(model, n=1)
    a = mpruner.analyze(model, data, metric="angular", progress=False)
    fig = plot_analysis(a, str(tmp_path / "a.png"))
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "angular distance (arccos cos / π)" in labels and "CKA" not in labels
    assert "angular distance" in fig.axes[0].get_title()

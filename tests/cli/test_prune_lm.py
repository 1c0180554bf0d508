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


# ---------------------------------------------------------------- healing, tolerance, interruptions
def _lm_args(lm_dir, out, *extra):
    return ["prune", "--model", str(lm_dir), "--task", "causal-lm", "--data", str(lm_dir / "corpus.txt"),
            "--select", "contiguous", "--n", "2", "--seq-len", "16", "--batch-size", "4", "--out", str(out),
            "--no-progress", *extra]


@pytest.mark.parametrize("train", ["around-cuts", "last:1", "lora"])
def test_heal_tokens_distills_within_the_budget(lm_dir, tmp_path, capsys, monkeypatch, train):
    from mpruner.training import Finetuner

    made = []
    real_call = Finetuner.__call__

    def spy(self, model):
        made.append(self)
        return real_call(self, model)

    monkeypatch.setattr(Finetuner, "__call__", spy)
    rc = main(_lm_args(lm_dir, tmp_path / "run", "--heal-tokens", "100", "--heal-train", train,
                       "--tolerance", "10"))
    assert rc == 0, capsys.readouterr().err
    tuner = made[0]
    assert tuner.max_tokens == 100 and tuner.train == train and tuner.distill is not None
    assert tuner.distill.teacher.config.num_hidden_layers == 5  # the original model teaches
    assert (train == "lora") == (tuner.lora is not None)


def test_no_distill_and_bad_heal_values(lm_dir, tmp_path, capsys, monkeypatch):
    from mpruner.training import Finetuner

    made = []
    monkeypatch.setattr(Finetuner, "__call__", lambda self, model: made.append(self))
    assert main(_lm_args(lm_dir, tmp_path / "a", "--heal-tokens", "1k", "--no-distill", "--tolerance", "10")) == 0
    assert made[0].distill is None and made[0].max_tokens == 1000
    for bad, message in ((["--heal-tokens", "lots"], "token count"), (["--heal-train", "some"], "train must be one of")):
        with pytest.raises(SystemExit):
            main(_lm_args(lm_dir, tmp_path / "b", *bad))
        assert message in capsys.readouterr().err


def test_perplexity_defaults_to_a_relative_tolerance_and_says_why_nothing_was_removed(lm_dir, tmp_path, capsys):
    rc = main(_lm_args(lm_dir, tmp_path / "run"))  # no --tolerance: 10% more perplexity, relative
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["tolerance"] == 0.1 and summary["tolerance_mode"] == "relative"
    assert "(tolerance 0.1 relative: bound" in out
    if summary["layers_after"] == summary["layers_before"]:
        last = out.strip().splitlines()[-1]
        assert last.startswith("mpruner prune: nothing removed:") and "--tolerance" in last


def test_ctrl_c_says_what_was_saved_and_how_to_resume(lm_dir, tmp_path, capsys, monkeypatch):
    from mpruner.prune import MPruner

    def interrupted(self, resume=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(MPruner, "run", interrupted)
    monkeypatch.setattr("sys.argv", ["mpruner"] + _lm_args(lm_dir, tmp_path / "run"))
    rc = main(_lm_args(lm_dir, tmp_path / "run"))
    err = capsys.readouterr().err
    assert rc == 130 and "mpruner prune: interrupted." in err and "Traceback" not in err
    assert "holds no checkpoint" in err
    resume = err.strip().splitlines()[-1]
    assert resume.startswith("  resume with: mpruner prune --model") and resume.endswith("--resume")

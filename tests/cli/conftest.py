"""Fixtures of the command-line tests: a nets.py of factories, a tiny BERT encoder folder and a
tiny LLaMA folder (the folders skip their tests where transformers or tokenizers is missing)."""
import pytest
import torch

from tests.helpers.cli import NETS
from tests.helpers.tiny_lms import tiny_lm

ENCODER_WORDS = "good bad fine awful great poor film plot actor scene music story dull fun slow sharp".split()
LM_WORDS = "the a of and to in is was for on with as by at from it an be this that which or are".split()


@pytest.fixture
def nets(tmp_path, monkeypatch):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("MPRUNER_TEST_MARKER", str(marker))
    return path, marker


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder without a head, a word-level tokenizer, calibration text and a labelled CSV."""
    T = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(ENCODER_WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                              sep_token="[SEP]").save_pretrained(d)
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32)
    T.BertModel(config).save_pretrained(d)  # no classification head: prune adds a new one
    g = torch.Generator().manual_seed(1)
    rows = [" ".join(ENCODER_WORDS[int(i)] for i in torch.randint(len(ENCODER_WORDS), (8,), generator=g)) for _ in range(96)]
    (d / "calib.txt").write_text("\n".join(rows[:32]) + "\n")
    (d / "eval.csv").write_text("text,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows[32:])))
    return d


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A tiny LLaMA folder: word-level tokenizer, random weights, a corpus of 40 lines."""
    T = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(LM_WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>")
    fast.save_pretrained(d)
    tiny_lm("llama", layers=5).save_pretrained(d)
    corpus = d / "corpus.txt"
    lines = [" ".join(LM_WORDS[(i * 7 + j) % len(LM_WORDS)] for j in range(12)) for i in range(40)]
    corpus.write_text("\n".join(lines) + "\n")
    return d

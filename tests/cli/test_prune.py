"""``mpruner prune --seed``: an encoder without a classification head gets a seeded new head, and
under torchrun every rank starts from rank 0's weights, so two ranks report the metric one
process reports."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from mpruner.cli import main
from mpruner.distributed import Ranks

T = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "good bad fine awful great poor film plot actor scene music story dull fun slow sharp".split()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder without a head, a word-level tokenizer, calibration text and a labelled CSV."""
    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                              sep_token="[SEP]").save_pretrained(d)
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32)
    T.BertModel(config).save_pretrained(d)  # no classification head: prune adds a new one
    g = torch.Generator().manual_seed(1)
    rows = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (8,), generator=g)) for _ in range(96)]
    (d / "calib.txt").write_text("\n".join(rows[:32]) + "\n")
    (d / "eval.csv").write_text("text,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows[32:])))
    return d


def _argv(d, out, seed):
    return ["prune", "--model", str(d), "--calib", str(d / "calib.txt"), "--eval", str(d / "eval.csv"),
            "--batch-size", "8", "--max-iterations", "1", "--threshold", "auto", "--tolerance", "1",
            "--seed", str(seed), "--out", str(out), "--no-progress"]


def _run(d, out, seed, capsys):
    assert main(_argv(d, out, seed)) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    head = T.AutoModelForSequenceClassification.from_pretrained(out / "model").classifier.weight.detach()
    return summary["metric_before"], head


def test_the_new_head_is_seeded(encoder_dir, tmp_path, capsys):
    metric_a, head_a = _run(encoder_dir, tmp_path / "a", 0, capsys)
    metric_b, head_b = _run(encoder_dir, tmp_path / "b", 0, capsys)
    _, head_c = _run(encoder_dir, tmp_path / "c", 7, capsys)
    assert metric_a == metric_b and torch.equal(head_a, head_b)  # the same command, the same start
    assert not torch.equal(head_a, head_c)  # --seed decides the head


def test_two_ranks_report_what_one_process_reports(encoder_dir, tmp_path, capsys):
    one, _ = _run(encoder_dir, tmp_path / "one", 0, capsys)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "mpruner", *_argv(encoder_dir, tmp_path / "two", 0)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["metric_before"]
    assert two == one


def _sync_worker(rank, world, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # every rank initialises its own, different weights
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    model[1].running_mean.normal_()
    mine = {k: v.clone() for k, v in model.state_dict().items()}
    Ranks(rank, world).sync_weights(model)
    torch.save({"before": mine, "after": model.state_dict()}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_sync_weights_gives_every_rank_rank_0s_parameters_and_buffers(tmp_path):
    mp.start_processes(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert any(not torch.equal(r0["before"][k], r1["before"][k]) for k in r0["before"])  # they did differ
    for key, value in r0["before"].items():
        assert torch.equal(r0["after"][key], value) and torch.equal(r1["after"][key], value), key

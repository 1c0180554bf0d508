"""What a new user meets first on the command line: help texts, mistakes caught before
anything slow runs (and named by their flag), and the README's factory examples.

The commands run in-process through ``mpruner.cli.main`` (no interpreter start per call),
on a five-block residual net defined in a ``nets.py`` written into a temporary directory.
"""
import argparse
import json
import os
import sys

import pytest
import torch

from mpruner.cli import build_parser, main

NETS = '''
import os
import torch, torch.nn as nn

if os.environ.get("MPRUNER_TEST_MARKER"):
    open(os.environ["MPRUNER_TEST_MARKER"], "a").write("imported\\n")  # the model module was loaded


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + 0.1 * torch.tanh(self.lin(x))


class Net(nn.Module):
    """No adapter knows it; its only nn.Sequential of blocks is `blocks`."""
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[Block(16) for _ in range(5)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def build():
    return Net()


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(16, 16, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


def calib():
    return [x for x, _ in _batches(4, 1)]


def train():
    return _batches(2, 2)


def evaluate(model):  # the metric function itself, as the Python API takes it
    with torch.no_grad():
        return sum((model(x).argmax(-1) == y).float().mean().item() for x, y in _batches(2, 3)) / 2
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "imported.txt"
    monkeypatch.setenv("MPRUNER_TEST_MARKER", str(marker))
    return path, marker


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``mpruner *argv``; argparse errors exit with 2."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- --help
def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()[1]))
def test_every_option_has_help_and_its_default(name):
    parser = _subcommands()[1][name]
    assert parser.description, f"`mpruner {name} --help` has no description"
    assert "``" not in parser.description, "the description shows raw reST backticks"
    blank, no_default = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = max(action.option_strings, key=len)
        if not action.help or action.help == argparse.SUPPRESS:
            blank.append(flag)
            continue
        text = action.help % {**vars(action), "prog": parser.prog}
        if not action.required and "default" not in text.lower():
            no_default.append(flag)
    assert not blank, f"`mpruner {name}` options without help: {blank}"
    assert not no_default, f"`mpruner {name}` options whose help does not say the default: {no_default}"
    parser.format_help()  # every %(default)s expands


def test_top_level_help_lists_every_command(capsys):
    parser, subs = _subcommands()
    text = parser.format_help()
    for name in subs:
        assert name in text


# ---------------------------------------------------------------- item: --eval evaluate(model)
def test_prune_eval_takes_the_metric_function_itself(nets, capsys, tmp_path):
    code, out, err = run(capsys, "prune", "--model", "nets.py:build", "--calib", "nets.py:calib",
                         "--train", "nets.py:train", "--eval", "nets.py:evaluate", "--threshold", "auto",
                         "--tolerance", "1", "--max-iterations", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert "missing 1 required positional argument" not in err
    assert "mpruner: attempt 0" in out  # one line per attempt without bars
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["layers_before"] == 5


# ---------------------------------------------------------------- item: custom model without --layers
def test_analyze_custom_model_uses_its_only_block_container(nets, capsys, tmp_path):
    code, out, err = run(capsys, "analyze", "--model", "nets.py:build", "--data", "nets.py:calib",
                         "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 0, err
    assert "Net: 5 layers (blocks)" in out
    assert "no adapter knows Net; using its only nn.Sequential/nn.ModuleList" in out and "'blocks' (5 blocks)" in out
    assert "mpruner analyze: running Net" in out  # a line per stage even with --no-progress


def test_analyze_layers_typo_suggests_and_several_containers_are_listed(nets, capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "--model", "nets.py:build", "--data", "nets.py:calib",
                       "--layers", "blokcs", "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 1 and "--layers 'blokcs'" in err and "did you mean 'blocks'" in err
    with open("nets.py", "a") as f:
        f.write("\nclass Two(Net):\n    def __init__(self):\n        super().__init__()\n"
                "        self.stem = nn.Sequential(nn.Linear(16, 16), nn.Tanh())\n\n"
                "def build_two():\n    return Two()\n")
    code, _, err = run(capsys, "analyze", "--model", "nets.py:build_two", "--data", "nets.py:calib",
                       "--out", str(tmp_path / "b"), "--no-progress")
    assert code == 1
    assert "'blocks' (5 blocks), 'stem' (2 blocks)" in err and "--layers blocks" in err


# ---------------------------------------------------------------- item: checked before any model loads
@pytest.mark.parametrize("argv, expected", [
    (["analyze", "--model", "nets.py:build", "--data", "missing.txt"], "--data 'missing.txt': no such file"),
    (["analyze", "--model", "nets.py:build", "--data", "nets.py:calib", "--out", "afile"],
     "--out 'afile' is an existing file"),
    (["analyze", "--model", "hf-dir", "--data", "texts.txt", "--batch-size", "1"], "--biased"),
    (["prune", "--model", "nets.py:build", "--calib", "nets.py:calib", "--eval", "nets.py:evaluate",
      "--out", "afile"], "--out 'afile' is an existing file"),
    (["prune", "--model", "nets.py:build", "--calib", "nets.py:calib", "--eval", "missing.csv"],
     "--eval 'missing.csv': no such file"),
    (["prune", "--model", "nets.py:build", "--calib", "nets.py:calib", "--eval", "nets.py:evaluate",
      "--out", "fresh", "--resume"], "--resume: there is no checkpoint in fresh"),
    (["prune", "--model", "nets.py:build", "--calib", "nets.py:calib", "--eval", "nets.py:evaluate",
      "--threshold", "1.5"], "--threshold"),
    (["demo", "--threshold", "1.5"], "--threshold"),
    (["demo", "--out", "afile"], "--out 'afile' is an existing file"),
    (["demo", "--resume", "--out", "fresh"], "--resume: there is no checkpoint"),
])
def test_mistakes_are_refused_before_the_model_loads(nets, capsys, tmp_path, argv, expected):
    _, marker = nets
    (tmp_path / "afile").write_text("not a directory\n")
    (tmp_path / "texts.txt").write_text("one\ntwo\n")
    (tmp_path / "hf-dir").mkdir()
    (tmp_path / "hf-dir" / "config.json").write_text("{}")
    code, _, err = run(capsys, *argv)
    assert code in (1, 2), err
    assert expected in err, err
    assert not marker.exists(), "the model module was imported before the mistake was reported"
    assert not (tmp_path / "fresh").exists()


# ---------------------------------------------------------------- item: unknown bench methods
def test_bench_refuses_unknown_methods_and_peers(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--methods", "mpruner,pytorch-kca", "--out", str(tmp_path / "b"))
    assert code == 1
    assert "'pytorch-kca' (did you mean 'pytorch-cka'?)" in err and "choose from mpruner, " in err
    code, _, err = run(capsys, "bench", "--peers", "pytorch-kca", "--out", str(tmp_path / "b"))
    assert code == 1 and "--peers: unknown ['pytorch-kca']" in err
    code, _, err = run(capsys, "bench", "--workload", "dense-smal", "--out", str(tmp_path / "b"))
    assert code == 1 and "--workload: unknown ['dense-smal']" in err
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- item: resume messages
def test_resume_with_changed_options_names_the_flags(nets, capsys, tmp_path):
    out = str(tmp_path / "run")
    base = ["prune", "--model", "nets.py:build", "--calib", "nets.py:calib", "--eval", "nets.py:evaluate",
            "--max-iterations", "1", "--out", out, "--no-progress"]
    code, _, err = run(capsys, *base, "--threshold", "0.99")
    assert code == 0, err
    code, _, err = run(capsys, *base, "--threshold", "0.95", "--resume")
    assert code == 1
    assert "--threshold was 0.99, now 0.95" in err
    assert "{" not in err, "the message dumps option dicts"


# ---------------------------------------------------------------- item: what the pruned model directory holds
def test_report_saves_the_tokenizer_beside_the_model(tmp_path):
    import mpruner
    from mpruner.prune.outputs import write_report

    class Tokenizer:
        def save_pretrained(self, path):
            os.makedirs(path, exist_ok=True)
            open(os.path.join(path, "tokenizer.json"), "w").write("{}")

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
    result = mpruner.MPruner(model, [torch.randn(8, 4)], lambda m: 1.0, threshold=0.999999, progress=False,
                             verbose=False).run()
    summary = write_report(result, tmp_path / "out", heatmaps=False, tokenizer=Tokenizer())
    assert (tmp_path / "out" / "model" / "tokenizer.json").is_file() and summary["files"]["tokenizer"] == "model"


# ---------------------------------------------------------------- item: output a user reads
def test_latency_in_human_units():
    from mpruner.surgery.stats import ModelStats, format_ms

    assert format_ms(1120.0) == "1.12 s" and format_ms(12.34) == "12.3 ms" and format_ms(0.5) == "500 µs"
    assert "latency 1.12 s" in str(ModelStats(10, 20, 1120.0, 40))


def test_finetune_bar_draws_each_step_once(capsys):
    from mpruner.training import Finetuner

    model = torch.nn.Linear(4, 2)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
    Finetuner(data, epochs=1, progress=True)(model)
    err = capsys.readouterr().err
    frames = [f for f in err.replace("\r", "\n").split("\n") if "fine-tune" in f and "loss=" in f]
    steps = [f.split("|")[-1].split("[")[0] for f in frames]  # " 1/3 ", " 2/3 ", ...
    assert len(steps) == len(set(steps)), f"a step was drawn more than once: {frames}"

"""``mpruner prune`` (mpruner/cli/prune.py): module:factory specs and Hugging Face folders, the
metric function passed as --eval, resume with changed options named by their flags, --fsdp
refused without torchrun; ``--seed``: an encoder without a classification head gets a seeded
new head, and under torchrun every rank starts from rank 0's weights, so two ranks report the
metric one process reports."""
import json
import os
import subprocess
import sys

import torch

from mpruner.cli import main
from tests.helpers import prune_job, prune_job_torchrun
from tests.helpers.cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _argv(d, out, seed):
    return ["prune", "--model", str(d), "--calib", str(d / "calib.txt"), "--eval", str(d / "eval.csv"),
            "--batch-size", "8", "--max-iterations", "1", "--threshold", "auto", "--tolerance", "1",
            "--seed", str(seed), "--out", str(out), "--no-progress"]


def _run(d, out, seed, capsys):
    import transformers as T

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


def test_prune_eval_takes_the_metric_function_itself(nets, capsys, tmp_path):
    code, out, err = run(capsys, "prune", "--model", "nets.py:build", "--calib", "nets.py:calib",
                         "--train", "nets.py:train", "--eval", "nets.py:evaluate", "--threshold", "auto",
                         "--tolerance", "1", "--max-iterations", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert "missing 1 required positional argument" not in err
    assert "mpruner: attempt 0" in out  # one line per attempt without bars
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["layers_before"] == 5


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


def test_cli_fsdp_without_torchrun_is_refused_before_loading(tmp_path, capsys):
    from mpruner.cli import main

    job = prune_job_torchrun.__file__
    code = main(["prune", "--model", f"{job}:model", "--calib", f"{job}:calib", "--eval", f"{job}:evaluate",
                 "--train", f"{job}:train", "--out", str(tmp_path / "out"), "--fsdp", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "--fsdp shards the fine-tuning over the ranks of torchrun" in err, err
    assert "loading" not in capsys.readouterr().out

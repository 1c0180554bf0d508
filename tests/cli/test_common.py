"""What every ``mpruner`` subcommand shares (mpruner/cli/common.py): mistakes are caught before
anything slow runs, named by their flag, and before the model's module is imported."""
import pytest

from tests.helpers.cli import run


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
    (["demo", "--scenario", "lm", "--resume", "--out", "fresh"], "--resume: there is no checkpoint in fresh/n*-checkpoint"),
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

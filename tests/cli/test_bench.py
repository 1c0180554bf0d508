"""`mpruner bench` (mpruner/cli/bench.py): unknown methods, peers and workloads are refused,
with a suggestion, before anything runs."""
from tests.helpers.cli import run


def test_bench_refuses_unknown_methods_and_peers(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--methods", "mpruner,pytorch-kca", "--out", str(tmp_path / "b"))
    assert code == 1
    assert "'pytorch-kca' (did you mean 'pytorch-cka'?)" in err and "choose from mpruner, " in err
    code, _, err = run(capsys, "bench", "--peers", "pytorch-kca", "--out", str(tmp_path / "b"))
    assert code == 1 and "--peers: unknown ['pytorch-kca']" in err
    code, _, err = run(capsys, "bench", "--workload", "dense-smal", "--out", str(tmp_path / "b"))
    assert code == 1 and "--workload: unknown ['dense-smal']" in err
    assert not (tmp_path / "b").exists()

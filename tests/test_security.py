"""Loading a file never runs code: no pickle, no remote code, no imports named by file content,
no paths from records that leave their directory."""
import json
import os
import pathlib
import pickle
import re
import sys

import pytest
import torch

import mpruner
from mpruner.analysis.result import Analysis
from mpruner.prune import checkpoint as ckpt

from tests.helpers import prune_job

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("mpruner", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py"))


class Bomb:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path(self.marker).write_text, ("code ran",))


def _bomb(path, marker):
    path.write_bytes(pickle.dumps({"state_dict": Bomb(marker)}))


# ---------------------------------------------------------------- the sources
def _code(path):
    # The sources minus this file's own description of what it looks for.
    return "" if path.name == "test_security.py" else path.read_text(encoding="utf-8")


def test_no_pickle_and_torch_load_only_with_weights_only():
    offenders = []
    for path in SOURCES:
        for n, line in enumerate(_code(path).splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bimport (c?pickle|dill|joblib|shelve)\b|\bpickle\.loads?\(", code):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "pickle in the sources:\n" + "\n".join(offenders)


def test_no_remote_code_is_trusted_in_the_package():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES if p.parts[-2] != "tests" and "tests" not in p.parts
            for n, line in enumerate(_code(p).splitlines(), 1) if re.search(r"trust_remote_code\s*=\s*True", line)]
    assert not hits


def test_user_code_is_imported_only_by_the_cli_loader():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "mpruner").rglob("*.py")
                       if re.search(r"import_module\(|spec_from_file_location\(|exec_module\(|(?<![.\w])exec\(|(?<![.\w])eval\(",
                                    p.read_text(encoding="utf-8")))
    # cli/common.py: load_factory, reached only from --model/--data/--calib/--train/--eval
    # arguments; bench/worker.py imports the benchmark peers by their fixed module names;
    # moved.py imports mpruner's own modules named in its table of old import paths.
    assert importers == ["mpruner/bench/worker.py", "mpruner/cli/common.py", "mpruner/moved.py"], importers


# ---------------------------------------------------------------- files handed to mpruner
@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    """A finished checkpoint directory of the small residual net (one accepted removal)."""
    d = tmp_path_factory.mktemp("ckpt")
    model, train, _ = prune_job.build()
    mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", threshold=0.95, view="flatten",
                    progress=False, checkpoint_dir=d, max_iterations=1).run()
    return d


def test_pickle_bomb_beside_a_checkpoint_is_never_loaded(pruned_dir, tmp_path):
    marker = tmp_path / "ran"
    state = ckpt.read_state(pruned_dir)
    model_dir = pruned_dir / state["model_dir"]
    for name in ("pytorch_model.bin", "model.pt", "state.pt", "optimizer.pt"):
        _bomb(model_dir / name, marker)
        _bomb(pruned_dir / name, marker)
    model, train, _ = prune_job.build()
    mpruner.load_pruned(model_dir, prune_job.Net)
    mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", threshold=0.95, view="flatten",
                    progress=False, checkpoint_dir=pruned_dir, max_iterations=1).run(resume=True)
    assert not marker.exists()


def test_pickle_bomb_as_the_weights_file_is_refused(tmp_path):
    marker = tmp_path / "ran"
    mpruner.save_pruned(prune_job.Net(), tmp_path / "m")
    _bomb(tmp_path / "m" / "model.safetensors", marker)
    with pytest.raises(ValueError, match="model.safetensors.*not a readable safetensors file"):
        mpruner.load_pruned(tmp_path / "m", prune_job.Net)
    assert not marker.exists()


def test_state_with_escaping_model_dir_is_refused(pruned_dir, tmp_path):
    victim = tmp_path / "victim"
    mpruner.save_pruned(prune_job.Net(), victim)  # a loadable model outside the checkpoint directory
    d = tmp_path / "ck"
    d.mkdir()
    state = json.loads((pruned_dir / ckpt.STATE).read_text())
    for bad in (os.path.relpath(victim, d), str(victim), "model-0001/../../victim", "model-0001/", "..", ""):
        state["model_dir"] = bad
        (d / ckpt.STATE).write_text(json.dumps(state))
        with pytest.raises(ValueError, match=r"state\.json: has an invalid 'model_dir'"):
            ckpt.read_state(d)


def test_record_with_escaping_or_foreign_names_is_refused(tmp_path):
    from safetensors.torch import save_model

    model = prune_job.Net()
    bad_records = [
        {"adapter": "sequential", "original": {"blocks": 8}, "steps": [{"../../etc": [1]}]},
        {"adapter": "sequential", "original": {"blocks": 8}, "steps": [{"blocks": ["../x"]}]},
        {"adapter": "sequential", "original": {"blocks": 8}, "steps": [{"blocks": [-1]}]},
        {"adapter": "sequential", "original": "blocks", "steps": []},
        {"adapter": ["x"], "original": {}, "steps": []},
    ]
    for i, rec in enumerate(bad_records):
        d = tmp_path / f"r{i}"
        d.mkdir()
        text = json.dumps({"format": "mpruner.pruned", "version": 1, "model_class": "os.system", **rec})
        save_model(model, str(d / "model.safetensors"), metadata={"format": "pt", "mpruner_record": text})
        with pytest.raises(ValueError, match="malformed mpruner record"):
            mpruner.load_pruned(d, prune_job.Net)


def test_names_in_files_are_never_imported(tmp_path, monkeypatch):
    # A module that records being imported, named by every string field a file could carry.
    (tmp_path / "planted_module.py").write_text("import pathlib\npathlib.Path(__file__).with_name('ran').touch()\n"
                                                "def factory():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "planted_module:factory"
    Analysis(torch.eye(2), [spec, "planted_module.factory"], 3, {"model": spec, "layers": spec}).save(
        str(tmp_path / "a.json"))
    Analysis.load(str(tmp_path / "a.json"))
    from safetensors.torch import save_model

    text = json.dumps({"format": "mpruner.pruned", "version": 1, "model_class": spec, "adapter": spec,
                       "original": {}, "steps": []})
    (tmp_path / "m").mkdir()
    save_model(prune_job.Net(), str(tmp_path / "m" / "model.safetensors"), metadata={"mpruner_record": text})
    mpruner.load_pruned(tmp_path / "m", prune_job.Net)
    assert "planted_module" not in sys.modules and not (tmp_path / "ran").exists()


# ---------------------------------------------------------------- Hugging Face directories
def _tiny_bert_dir(path):
    T = pytest.importorskip("transformers")
    cfg = T.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=16, max_position_embeddings=16)
    T.BertModel(cfg).save_pretrained(path)
    return path


def _analyze_cli(model_dir, tmp_path):
    from mpruner.cli import main

    (tmp_path / "t.txt").write_text("a b c\nd e f\ng h i\nj k l\n")
    return main(["analyze", "--model", str(model_dir), "--data", str(tmp_path / "t.txt"), "--no-progress",
                 "--out", str(tmp_path / "out")])


def test_config_asking_for_remote_code_is_refused(tmp_path, capsys):
    d = _tiny_bert_dir(tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "planted.Config", "AutoModel": "planted.Model"}
    (d / "planted.py").write_text("import pathlib\npathlib.Path(__file__).with_name('ran').touch()\n")
    # A known model type: the built-in class is used, the planted code is not run.
    (d / "config.json").write_text(json.dumps(cfg))
    assert _analyze_cli(d, tmp_path) == 0
    assert not (d / "ran").exists()
    # A type only the planted code defines: refused, naming the flag transformers would need.
    cfg["model_type"] = "planted-model"
    (d / "config.json").write_text(json.dumps(cfg))
    assert _analyze_cli(d, tmp_path) == 1
    assert "trust_remote_code" in capsys.readouterr().err
    assert not (d / "ran").exists()


def test_pickled_hf_weights_are_not_executed(tmp_path):
    d = _tiny_bert_dir(tmp_path / "pickled")
    (d / "model.safetensors").unlink()
    _bomb(d / "pytorch_model.bin", tmp_path / "ran")
    try:
        _analyze_cli(d, tmp_path)
    except Exception as e:  # transformers' own refusal (weights_only=True) may surface as its own error
        assert "weights_only" in str(e) or "Weights only" in str(e) or "pickle" in str(e).lower(), e
    assert not (tmp_path / "ran").exists()

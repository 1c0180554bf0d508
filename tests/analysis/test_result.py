"""Analysis (mpruner/analysis/result.py): the result object, its views and its JSON file.

The analysis file is a format other tools and older mpruner versions read, so its keys,
defaults and messages are pinned here rather than only round-tripped.
"""
import json
import math

import pytest
import torch

from mpruner.analysis import result as R
from mpruner.analysis.result import Analysis
from tests.helpers.analysis_models import example


def _body(**changes):
    """A valid analysis file body for two layers; ``changes`` replace or (None) drop keys."""
    body = {"format": R.FORMAT, "version": R.FORMAT_VERSION, "cka": [[1.0, 0.5], [0.5, 1.0]],
            "layer_names": ["a", "b"], "other_layer_names": None, "num_samples": 8, "options": {"view": "mean"}}
    for k, v in changes.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def _load_error(tmp_path, body) -> str:
    path = tmp_path / "bad.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        Analysis.load(str(path))
    return str(info.value)


def _io_analysis(metric="cosine"):
    io = {"cosine": torch.tensor([[0.9, 0.3], [0.2, 0.8]], dtype=torch.float64),
          "angular": torch.tensor([[0.1, 0.4], [0.45, 0.2]], dtype=torch.float64)}
    return Analysis(torch.tensor([[1.0, 0.123456789012345], [0.123456789012345, 1.0]]), ["a", "b"], 8,
                    {"view": "tokens"}, metric=metric, block_io=io)


# layer_names is required: a file without it is refused for the missing key, not for a None
# that has no length.
def test_missing_layer_names_is_a_missing_key(tmp_path):
    with pytest.raises(KeyError):
        Analysis.from_dict(_body(layer_names=None))
    assert _load_error(tmp_path, _body(layer_names=None)) == \
        f"{tmp_path / 'bad.json'}: malformed mpruner analysis (missing key 'layer_names')"


# other_layer_names, version and options are optional: a minimal file, written by another tool
# without them, loads.
def test_minimal_file_without_optional_keys_loads():
    a = Analysis.from_dict(_body(other_layer_names=None, version=None, options=None))
    assert a.other_layer_names is None and a.options == {} and a.layer_names == ["a", "b"]


# Each names message gives the type, and a string of names shows it (it would otherwise be
# split into letters).
def test_names_messages():
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(layer_names="ab"))
    assert str(info.value) == "'layer_names' must be a list of strings, got str 'ab'"
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(layer_names=5))
    assert str(info.value) == "'layer_names' must be a list of strings, got int"


# Matrices are float64 whatever they came as; .cka is set only for the CKA metric.
def test_init_dtypes_and_cka_attribute():
    a = Analysis(torch.eye(2, dtype=torch.float32), ["a", "b"], 4,
                 block_io={"cosine": torch.eye(2, dtype=torch.float16)}, metric="cosine")
    assert a.matrix.dtype == torch.float64 and a.block_io["cosine"].dtype == torch.float64
    assert a.cka is None and a.metric == "cosine"
    assert Analysis(torch.eye(2), ["a", "b"], 4).cka is not None


# adjacent() and block_influence(): the errors word for word; influence is 1 - cos.
def test_views_and_their_errors():
    cross = Analysis(torch.zeros(2, 3), ["a", "b"], 4, other_layer_names=["x", "y", "z"])
    with pytest.raises(ValueError) as info:
        cross.adjacent()
    assert str(info.value) == "adjacent() compares consecutive layers of one model; this is a cross-model analysis"
    with pytest.raises(ValueError) as info:
        Analysis(torch.eye(2), ["a", "b"], 4).block_influence()
    assert str(info.value) == ("this analysis has no block inputs; run mpruner.analyze(..., block_inputs=True) "
                               "(the default for metric='cosine' and 'angular')")
    a = _io_analysis()
    assert a.block_influence().tolist() == pytest.approx([0.1, 0.2], abs=1e-15)


# run_distance(n): the diagonal of runs of n blocks, and n checked.
def test_run_distance():
    a = _io_analysis()
    assert a.run_distance(1).tolist() == [0.1, 0.2]
    assert a.run_distance(2).tolist() == [0.4]
    for bad in (0, 3, 1.0, "1"):
        with pytest.raises(ValueError) as info:
            a.run_distance(bad)
        assert str(info.value) == f"n must be an integer in [1, 2], got {bad!r}"


# Every argument of Analysis.plot reaches the plotting function unchanged, and dpi defaults to 150.
def test_plot_forwards_its_arguments(monkeypatch):
    from mpruner.analysis import plot

    seen = {}
    monkeypatch.setattr(plot, "plot_analysis", lambda a, path, **kw: seen.update(kw, path=path))
    a = Analysis(torch.eye(2), ["a", "b"], 4)
    a.plot("p.png", clusters=[[0, 1]], title="t", annotate=False, cmap="magma", dpi=72)
    assert seen == {"path": "p.png", "clusters": [[0, 1]], "title": "t", "annotate": False, "cmap": "magma", "dpi": 72}
    a.plot()
    assert seen == {"path": None, "clusters": None, "title": None, "annotate": None, "cmap": "viridis", "dpi": 150}


# The file's keys: "metric" only for another metric, "block_io" only with block inputs,
# "version" always; they are read back, values exact.
def test_file_keys_and_round_trip():
    plain = Analysis(torch.eye(2), ["a", "b"], 4).to_dict()
    assert set(plain) == {"format", "version", "cka", "layer_names", "other_layer_names", "num_samples", "options"}
    assert plain["version"] == R.FORMAT_VERSION
    d = _io_analysis().to_dict()
    assert d["metric"] == "cosine" and d["block_io"] == {"cosine": [[0.9, 0.3], [0.2, 0.8]],
                                                          "angular": [[0.1, 0.4], [0.45, 0.2]]}
    b = Analysis.from_dict(json.loads(json.dumps(d)))
    assert b.metric == "cosine" and b.cka is None
    assert b.matrix.tolist() == _io_analysis().matrix.tolist()  # float64 exactly
    assert set(b.block_io) == {"cosine", "angular"}
    for k, m in _io_analysis().block_io.items():
        assert b.block_io[k].dtype == torch.float64 and b.block_io[k].tolist() == m.tolist()
    d["block_io"]["cosine"][0][1] = None  # NaN is written as null and read back as NaN
    assert math.isnan(float(Analysis.from_dict(d).block_io["cosine"][0, 1]))


# A cka with too few rows (of the right length) is refused with the shape it has, not reshaped
# into a RuntimeError; a non-list names its type.
def test_cka_shape_messages():
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(cka=[[1.0, 0.5]]))
    assert str(info.value) == "'cka' must be a 2 x 2 list of rows (one per layer name), got 1 rows of lengths [2]"
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(cka=5))
    assert str(info.value) == "'cka' must be a 2 x 2 list of rows (one per layer name), got int"


# An analysis of zero samples is a valid file; the options and metric messages name what they
# got.
def test_num_samples_zero_and_type_messages():
    assert Analysis.from_dict(_body(num_samples=0)).num_samples == 0
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(options=[1]))
    assert str(info.value) == "'options' must be a JSON object, got list"
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(metric=3))
    assert str(info.value) == "'metric' must be a string, got 3"


# Malformed block_io is refused with its message (not an AttributeError or TypeError from
# iterating it).
@pytest.mark.parametrize("io", [5, {"cosine": 5}, {"cosine": [1.0]}])
def test_malformed_block_io(io):
    with pytest.raises(ValueError) as info:
        Analysis.from_dict(_body(block_io=io))
    assert str(info.value) == "'block_io' must map names to lists of rows"


# The file is indent-1 JSON, one value a line (diffable, and what earlier versions wrote); it is
# ASCII whatever the encoding, as json.dumps escapes every non-ASCII character.
def test_save_layout(tmp_path):
    a = _io_analysis()
    a.save(str(tmp_path / "a.json"))
    assert (tmp_path / "a.json").read_text(encoding="ascii") == json.dumps(a.to_dict(), indent=1)


# A NaN in the options is not written as the non-JSON token NaN, which strict readers refuse;
# nothing is written.
def test_save_refuses_nan_options(tmp_path):
    path = tmp_path / "a.json"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        Analysis(torch.eye(2), ["a", "b"], 4, {"lr": float("nan")}).save(str(path))
    assert list(tmp_path.iterdir()) == []


# A file of exactly MAX_FILE_BYTES loads; one byte more is refused, with the file, its size and
# the question.
def test_load_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    Analysis(torch.eye(2), ["a", "b"], 4).save(str(path))
    size = path.stat().st_size
    monkeypatch.setattr(R, "MAX_FILE_BYTES", size)
    assert Analysis.load(str(path)).layer_names == ["a", "b"]
    monkeypatch.setattr(R, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(ValueError) as info:
        Analysis.load(str(path))
    assert str(info.value) == (f"{path} is {size} bytes; an analysis file is at most {size - 1} (was it written "
                               "by Analysis.save?)")


# Invalid JSON: the error names the file, the error's type and its first 100 characters.
def test_load_invalid_json_message(tmp_path):
    digits = "1" * 5000  # json's int limit: a message longer than 100 characters
    with pytest.raises(ValueError) as want:
        json.loads(digits)
    text = _load_error(tmp_path, "[" + digits + "]")
    assert text == (f"{tmp_path / 'bad.json'} is not valid JSON (ValueError: {str(want.value)[:100]}); was it "
                    "written by Analysis.save?")
    assert len(str(want.value)) > 100


# The file is read as UTF-8, not in the locale's encoding: a file with UTF-8 layer names, as
# another tool writes them (no ASCII escapes), loads whatever the locale.
def test_load_reads_utf8_under_any_locale(tmp_path, ascii_locale):
    path = tmp_path / "a.json"
    path.write_bytes(json.dumps(_body(layer_names=["blöck.0", "blöck.1"]), ensure_ascii=False).encode("utf-8"))
    assert Analysis.load(str(path)).layer_names == ["blöck.0", "blöck.1"]


# Another metric is named in the repr.
def test_repr_names_the_metric():
    assert repr(_io_analysis()).startswith("Analysis(2x2 cosine, ")


def _write(tmp_path, **change):
    data = Analysis(torch.tensor([[1.0, 0.5], [0.5, 1.0]]), ["a", "b"], 10, {"view": "mean"}).to_dict()
    data.update(change)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("change,message", [
    ({"cka": [[1.0, 0.5, 0.5, 1.0]]}, "2 x 2 list of rows"),            # 1x4 with 2 names (was read as 2x2)
    ({"cka": [[1.0, 0.5, 0.1], [0.5, 1.0, 0.1]]}, "2 x 2 list of rows"),  # 2x3 (was a bare RuntimeError)
    ({"layer_names": "ab"}, "list of strings"),                       # (was split into letters)
    ({"layer_names": [1, 2]}, "list of strings"),
    ({"cka": [[1.0, "x"], [0.5, 1.0]]}, "numbers or null"),
    ({"cka": "1,0.5"}, "list of rows"),
    ({"num_samples": "10"}, "num_samples"),
    ({"num_samples": -1}, "num_samples"),
    ({"options": [1]}, "options"),
    ({"other_layer_names": ["x"]}, "2 x 1"),
])
def test_analysis_load_refuses_malformed_content(tmp_path, change, message):
    path = _write(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as info:
        Analysis.load(path)
    assert path in str(info.value)


def test_analysis_load_names_a_missing_key(tmp_path):
    data = json.loads(open(_write(tmp_path)).read())
    del data["num_samples"]
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing key 'num_samples'"):
        Analysis.load(str(tmp_path / "b.json"))


def test_analysis_roundtrip_keeps_nan(tmp_path):
    a = Analysis(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), ["a", "b"], 3)
    a.save(str(tmp_path / "r.json"))
    b = Analysis.load(str(tmp_path / "r.json"))
    assert torch.equal(torch.isnan(b.cka), torch.isnan(a.cka)) and b.layer_names == ["a", "b"]


def test_analysis_repr():
    a = Analysis(torch.eye(2), ["a", "b"], 10, {"view": "mean", "layers": "blocks"})
    assert repr(a) == "Analysis(2x2 CKA, layers='blocks', view='mean', num_samples=10)"
    assert repr(Analysis(torch.eye(1), ["a"], 3)) == "Analysis(1x1 CKA, layers='?', view='?', num_samples=3)"


def test_save_load_roundtrip_without_pickle(tmp_path):
    a = example()
    a.save(tmp_path / "cka.json")
    raw = json.loads((tmp_path / "cka.json").read_text())
    assert raw["format"] == "mpruner.analysis" and raw["cka"][1][2] is None  # NaN stored as null, strict JSON
    b = Analysis.load(tmp_path / "cka.json")
    assert torch.equal(b.cka.isnan(), a.cka.isnan()) and torch.equal(b.cka.nan_to_num(), a.cka.nan_to_num())
    assert b.layer_names == a.layer_names and b.num_samples == 64 and b.options == a.options
    assert b.num_skipped == 3 and not b.is_cross and b.adjacent().tolist()[0] == 0.9
    c = example(cross=True)
    c.save(tmp_path / "cross.json")
    d = Analysis.load(tmp_path / "cross.json")
    assert d.is_cross and d.cka.shape == (3, 2) and d.other_layer_names == c.other_layer_names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cka.json", "cross.json"]  # no temporary files left


def test_load_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Analysis.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an mpruner analysis"):
        Analysis.load(tmp_path / "other.json")
    (tmp_path / "newer.json").write_text('{"format": "mpruner.analysis", "version": 99}')
    with pytest.raises(ValueError, match="newer than this mpruner reads"):
        Analysis.load(tmp_path / "newer.json")
    with pytest.raises(ValueError, match=r"cka has shape \(3, 3\) but there are 2 x 2 layer names"):
        Analysis(torch.eye(3), ["a", "b"], 1)

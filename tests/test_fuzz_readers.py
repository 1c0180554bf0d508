"""Fuzzing every file reader (tests/helpers/fuzz_targets.py) with hypothesis-driven mutations of a
valid seed file: each must load, or refuse with its documented error naming the file.

A short seeded run here; tools/fuzz_readers.py runs the same targets for minutes
(atheris when installed) and README "Reliability" has its counts.
"""
import shutil

import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers import fuzz_targets as F  # noqa: E402

SLOW = {"checkpoint state.json", "checkpoint weights", "load_pruned weights", "load_pruned record"}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            d = tmp_path_factory.mktemp(name.replace(" ", "_").replace("/", "_").replace(".", ""))
            work = d / "work"
            path, seed = F.prepared(F.TARGETS[name], work)
            backup = d / "backup"
            shutil.copytree(work, backup)
            cache[name] = (work, backup, path, seed)
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(F.TARGETS))
def test_seed_file_loads(seeds, name):
    work, backup, path, seed = seeds(name)
    assert F.run_one(F.TARGETS[name], path, seed, b"") == "loaded"


@pytest.mark.parametrize("name", list(F.TARGETS))
def test_mutated_files_load_or_are_refused_naming_the_file(seeds, name):
    work, backup, path, seed = seeds(name)
    target = F.TARGETS[name]

    @settings(max_examples=15 if name in SLOW else 40)
    @given(program=st.binary(min_size=1, max_size=96))
    def fuzz(program):
        F.restore(work, backup)
        F.run_one(target, path, seed, program)

    fuzz()


@given(spec=st.one_of(
    st.text(max_size=30),
    st.builds(lambda m, a: f"{m}:{a}", st.sampled_from(["zz_no_such_module", "planted_factories", "x.py",
                                                         "planted_factories.py", ""]),
              st.text(alphabet="abcdefghij._:0 /", max_size=12))))
def test_model_factory_specs_parse_or_refuse(spec, tmp_path_factory):
    """--model module:factory: a clear error naming the argument, never an import of anything else."""
    import sys

    from mpruner.cli.common import is_factory, load_factory

    if not is_factory(spec):
        return
    module = spec.rpartition(":")[0]
    if module and module not in ("zz_no_such_module", "planted_factories", "x.py", "planted_factories.py"):
        return  # only specs whose module is ours: a fuzzer must not import arbitrary installed modules
    d = tmp_path_factory.getbasetemp() / "factories"
    d.mkdir(exist_ok=True)
    (d / "planted_factories.py").write_text("def make():\n    return 7\nvalue = 3\n")
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    try:
        load_factory(spec, "--model")
    except (ValueError, FileNotFoundError, ModuleNotFoundError, AttributeError) as e:
        assert "--model" in str(e) or "zz_no_such_module" in str(e) or isinstance(e, ModuleNotFoundError), str(e)


# Malformed inputs (mutation programs for fuzz_targets.mutate, or whole files) that each once
# raised something other than the documented error; the comment says what that was.
MALFORMED = [
    ("Analysis.load", b"\x01\x00"),             # undecodable UTF-8: UnicodeDecodeError without the path
    ("read_texts .txt", b"\x01\x00"),           # the same in the text reader
    ("read_texts .csv", b"\x01\x00"),
    ("read_texts .tsv", b"\x01\x00"),
    ("prune --train/--eval CSV", b"\x01\x00"),
    ("prune --train/--eval CSV", b"\x05text,label\nonly-one-field\n"),  # short row: None text
    ("load_pruned record", b"\xeb\n"),          # a record without 'adapter': KeyError
    ("load_pruned record", b"!1"),               # adapter null: the mismatch error lacked the file
    ("load_pruned record", b"\n="),
    ("load_pruned record", b"\n(\n("),          # a step naming an unknown block list: TypeError
]


@pytest.mark.parametrize("name,program", MALFORMED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MALFORMED)])
def test_malformed_inputs_load_or_are_refused_naming_the_file(seeds, name, program):
    work, backup, path, seed = seeds(name)
    F.restore(work, backup)
    assert F.run_one(F.TARGETS[name], path, seed, program) in ("refused", "loaded")

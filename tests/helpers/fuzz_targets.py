"""Fuzz targets: every reader of a file a user may be handed, and one mutator for all of them.

A target builds a valid seed file once (``make(dir) -> path``), then ``read(path)`` is
called on mutated copies. Each call must return normally or raise one of the target's
documented errors, whose message names the file; anything else (a traceback from inside
a library, an error without the file's name, a hang) is a finding.

``mutate(seed, program)`` derives the mutated bytes from a byte string ``program``
deterministically, so that hypothesis (``st.binary()``, in the tests) and atheris (raw
fuzzer input, tools/fuzz_readers.py) drive the same mutations. Add a reader with one
``Target(...)`` entry in ``TARGETS``.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Tuple

import torch

MAX_BYTES = 1 << 16  # mutated files stay small: the readers' size checks are tested separately


# ---------------------------------------------------------------- the mutator
def _json_value(p: bytes, depth: int = 0):
    """A JSON value decoded from program bytes: every type, hostile numbers and strings included."""
    if not p:
        return None
    k, rest = p[0] % 12, p[1:]
    if k == 0:
        return None
    if k == 1:
        return bool(rest[:1] and rest[0] & 1)
    if k == 2:
        return int.from_bytes(rest[:8].ljust(8, b"\0"), "little", signed=True)
    if k == 3:
        return [-1, 0, 1, 2**31, 2**63, -(2**63), 10**30][rest[0] % 7] if rest else 0
    if k == 4:
        return [float("nan"), float("inf"), -1e308, 1e-320, 0.5, -0.0, 1.0 + 1e-16][rest[0] % 7] if rest else 0.0
    if k == 5:
        return rest[:24].decode("utf-8", "replace")
    if k == 6:
        return ["../../etc/passwd", "/tmp/x", "model-0000/../..", "a:b", "os:system", "", "\0", "model-9999",
                "x" * 300][rest[0] % 9] if rest else ""
    if k in (7, 8) and depth < 4:
        n = rest[0] % 4 if rest else 0
        return [_json_value(rest[1 + i * 3:], depth + 1) for i in range(n)]
    if k in (9, 10) and depth < 4:
        n = rest[0] % 3 if rest else 0
        return {str(_json_value(rest[1 + i:], depth + 1))[:12]: _json_value(rest[2 + i * 3:], depth + 1)
                for i in range(n)}
    if k == 11:
        return [[0.5] * (rest[0] % 5 if rest else 1)] * (rest[1] % 5 if len(rest) > 1 else 1)
    return 0


def _nodes(value, path=()):
    yield path
    if isinstance(value, dict):
        for key in value:
            yield from _nodes(value[key], path + (key,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, path + (i,))


def mutate_json(data, program: bytes):
    """Replaces (or deletes) one node of parsed JSON, chosen and filled from program bytes."""
    data = copy.deepcopy(data)
    nodes = list(_nodes(data))
    target = nodes[int.from_bytes(program[:2].ljust(2, b"\0"), "little") % len(nodes)]
    value = _json_value(program[3:])
    if not target:
        return value
    parent = data
    for key in target[:-1]:
        parent = parent[key]
    if program[2:3] and program[2] % 5 == 0:
        del parent[target[-1]]
    else:
        parent[target[-1]] = value
    return data


def mutate(seed: bytes, program: bytes) -> bytes:
    """Truncation, byte flips, random splices, a JSON-aware change (for JSON seeds), or raw bytes."""
    if not program:
        return seed
    kind, p = program[0] % 6, program[1:]
    pos = int.from_bytes(p[:4].ljust(4, b"\0"), "little")
    if kind == 0:  # truncate
        return seed[: pos % (len(seed) + 1)]
    if kind == 1:  # flip a few bytes
        out = bytearray(seed)
        for i in range(0, min(len(p), 24), 3):
            if out:
                out[int.from_bytes(p[i:i + 2].ljust(2, b"\0"), "little") % len(out)] ^= p[i + 2:i + 3][0] if \
                    p[i + 2:i + 3] else 0xFF
        return bytes(out)
    if kind == 2:  # splice random bytes in
        at = pos % (len(seed) + 1)
        return (seed[:at] + p[4:] + seed[at:])[:MAX_BYTES]
    if kind in (3, 4):  # structure-aware: change one JSON node
        try:
            data = json.loads(seed)
        except ValueError:
            return seed[::-1]
        return json.dumps(mutate_json(data, p), allow_nan=True).encode()[:MAX_BYTES]
    return p[:MAX_BYTES]  # kind 5: the program's bytes are the file


# ---------------------------------------------------------------- targets
@dataclass
class Target:
    name: str
    make: Callable[[Path], Path]          # writes the valid seed file under a directory, returns its path
    read: Callable[[Path], object]        # reads it the way mpruner does
    errors: Tuple[type, ...] = (ValueError,)
    names_file: bool = True               # the message must name the file (or its directory)
    extra: dict = field(default_factory=dict)


def _analysis_seed(d: Path) -> Path:
    from mpruner.analysis.result import Analysis

    path = d / "cka.json"
    Analysis(torch.tensor([[1.0, 0.5, float("nan")], [0.5, 1.0, 0.2], [float("nan"), 0.2, 1.0]]),
             ["blocks.0", "blocks.1", "blocks.2"], 64, {"view": "mean", "layers": "blocks"}).save(str(path))
    return path


def _analysis_read(path: Path):
    from mpruner.analysis.result import Analysis

    return Analysis.load(str(path))


def _net():
    from tests.helpers import prune_job

    return prune_job.Net()


def _pruned_seed(d: Path) -> Path:
    import mpruner

    torch.manual_seed(0)
    model = mpruner.remove_layers(_net(), {"blocks": [1, 2]})
    mpruner.save_pruned(model, d / "pruned")
    return d / "pruned" / "model.safetensors"


def _pruned_read(path: Path):
    import mpruner

    return mpruner.load_pruned(path.parent, _net)


def _record_seed(d: Path) -> Path:
    """The record inside the safetensors metadata, as a JSON file: read() writes it into a fresh file."""
    from safetensors import safe_open

    weights = _pruned_seed(d)
    with safe_open(str(weights), framework="pt") as f:
        text = f.metadata()["mpruner_record"]
    path = d / "record.json"
    path.write_text(text)
    return path


def _record_read(path: Path):
    import mpruner
    from safetensors.torch import load_file, save_file

    weights = path.parent / "pruned" / "model.safetensors"
    tensors = load_file(str(weights))
    out = path.parent / "fuzzed"
    out.mkdir(exist_ok=True)
    text = path.read_bytes().decode("utf-8", "replace")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt", "mpruner_record": text})
    return mpruner.load_pruned(out, _net)


def _checkpoint_seed(d: Path) -> Path:
    """A real checkpoint directory of the small residual net; the file fuzzed is its state.json."""
    import mpruner
    from tests.helpers import prune_job

    model, train, _ = prune_job.build()
    ck = d / "ckpt"
    mpruner.MPruner(model, [x for x, _ in train], lambda m: 1.0, layers="blocks", threshold=0.95, view="flatten",
                    progress=False, checkpoint_dir=ck, max_iterations=1).run()
    (d / "model.json").write_text("")
    return ck / "state.json"


def _resume(ck: Path):
    import mpruner
    from tests.helpers import prune_job

    torch.manual_seed(0)
    model = prune_job.Net()
    pruner = mpruner.MPruner(model, [torch.randn(8, 10)], lambda m: 1.0, layers="blocks", threshold=0.95,
                             view="flatten", progress=False, checkpoint_dir=ck, max_iterations=1)
    pruner._load()  # what run(resume=True) does first
    return pruner


def _checkpoint_weights_seed(d: Path) -> Path:
    state = _checkpoint_seed(d)
    return state.parent / json.loads(state.read_text())["model_dir"] / "model.safetensors"


def _texts_seed(suffix):
    def make(d: Path) -> Path:
        path = d / f"data{suffix}"
        if suffix == ".txt":
            path.write_text("a good film\nan awful film\n\n  spaces  \n")
        else:
            sep = "\t" if suffix == ".tsv" else ","
            path.write_text(f"text{sep}label\n\"a good, film\"{sep}1\nawful{sep}0\n")
        return path
    return make


def _texts_read(path: Path):
    from mpruner.data import read_texts

    return read_texts(str(path))


def _labelled_read(path: Path):
    from mpruner.cli.prune import _labelled_csv

    return _labelled_csv(str(path), "text", "label")


TARGETS = {t.name: t for t in [
    Target("Analysis.load", _analysis_seed, _analysis_read),
    Target("load_pruned weights", _pruned_seed, _pruned_read),
    Target("load_pruned record", _record_seed, _record_read),
    Target("checkpoint state.json", _checkpoint_seed, lambda p: _resume(p.parent)),
    Target("checkpoint weights", _checkpoint_weights_seed, lambda p: _resume(p.parent.parent)),
    Target("read_texts .txt", _texts_seed(".txt"), _texts_read),
    Target("read_texts .csv", _texts_seed(".csv"), _texts_read),
    Target("read_texts .tsv", _texts_seed(".tsv"), _texts_read),
    Target("prune --train/--eval CSV", _texts_seed(".csv"), _labelled_read),
]}


class Finding(Exception):
    """A reader's behaviour outside its contract."""


def run_one(target: Target, seed_path: Path, seed: bytes, program: bytes):
    """Writes mutate(seed, program) to the seed's place, reads it, and checks the outcome."""
    data = mutate(seed, program)
    seed_path.write_bytes(data)
    try:
        target.read(seed_path)
    except target.errors as error:
        text = str(error)
        if target.names_file and seed_path.name not in text and str(seed_path.parent) not in text:
            raise Finding(f"{target.name}: {type(error).__name__} does not name the file: {text[:200]}") from error
        return "refused"
    except Exception as error:  # noqa: BLE001 - any other error is what the fuzzer looks for
        raise Finding(f"{target.name}: {type(error).__name__}: {str(error)[:200]}") from error
    return "loaded"


def prepared(target: Target, directory: Path):
    """(seed path, seed bytes) for a target, built in ``directory``; the caller restores it per case."""
    directory.mkdir(parents=True, exist_ok=True)
    path = target.make(directory)
    return path, path.read_bytes()


def restore(directory: Path, backup: Path):
    """Puts a target's directory back as it was (checkpoint targets change more than one file)."""
    shutil.rmtree(directory)
    shutil.copytree(backup, directory)

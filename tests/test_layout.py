"""The package layout: every module imports, no import circles, stages import only forward.

The graph is read from the source (each module's ``mpruner.*`` imports, at top level or inside
functions, relative ones resolved), so a lazy import that hides a circle is still caught.
"""
import ast
import importlib
import pathlib

import pytest

import mpruner

PACKAGE_DIR = pathlib.Path(mpruner.__file__).parent

# Which homes each home of mpruner may import: the data flow of docs/design.md, forward only.
# A home is a package (mpruner/engine/) or a top-level module (mpruner/distributed.py).
BASE = {"version", "stacklevel"}
ALLOWED = {
    "version": set(),
    "stacklevel": set(),
    "moved": set(),            # old import paths, resolved by name at run time
    "progress": set(),
    "hardware": set(),         # what the CPU can do, read at run time
    "engine": BASE,
    "adapters": BASE,
    "data": set(),
    "distributed": set(),
    "analysis": BASE | {"engine", "adapters", "data", "distributed", "moved"},
    "surgery": BASE | {"adapters"},
    "evaluation": BASE | {"adapters", "data", "distributed"},
    "training": BASE | {"adapters", "surgery", "hardware"},
    "sparsity": BASE | {"adapters", "analysis"},
    "width": BASE | {"adapters", "surgery"},
    "prune": BASE | {"engine", "adapters", "analysis", "surgery", "training", "evaluation", "sparsity", "width", "data",
                     "distributed", "moved", "lm"},
    "lm": BASE | {"engine", "adapters", "analysis", "surgery", "training", "evaluation", "data", "distributed"},
    "bench": BASE | {"engine"},
    "demos": BASE | {"engine", "adapters", "analysis", "surgery", "training", "evaluation", "sparsity", "width", "data",
                     "distributed", "prune", "lm", "progress", "hardware"},
    "cli": BASE | {"engine", "adapters", "analysis", "surgery", "training", "evaluation", "sparsity", "width", "data",
                   "distributed", "prune", "lm", "bench", "demos", "progress", "hardware"},
}
MAX_LINES = 400  # a module longer than this does more than one job


def module_names():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


MODULES = dict(module_names())
# Compiled extensions (mpruner._C): leaves of the graph, imported but importing nothing of mpruner.
EXTENSIONS = {"mpruner." + p.name.split(".")[0] for p in PACKAGE_DIR.glob("*.so")} | {"mpruner._C"}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: pathlib.Path) -> set:
    """The mpruner modules ``module`` imports (a ``from X import name`` of a submodule counts as X.name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES
                       or f"{target}.{alias.name}" in EXTENSIONS else target for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != module)
    return found


def import_graph(modules=MODULES):
    return {name: imports_of(name, path) for name, path in modules.items()}


def find_cycle(graph):
    """One import circle as a list of modules, or None (iterative DFS, three colours)."""
    state = {}
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        trail = [root]
        state[root] = "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                trail.pop()
            elif state.get(child) == "open":
                return trail[trail.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                stack.append((child, iter(sorted(graph.get(child, ())))))
                trail.append(child)
    return None


def stage_of(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_cycle_finder_sees_a_lazy_circle(tmp_path):
    # The detector itself: a circle closed by an import inside a function is found.
    pkg = tmp_path / "mpruner"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from .x import f\n")
    (pkg / "a" / "x.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from .a.x import f\n")
    fake = {"mpruner": pkg / "__init__.py", "mpruner.a": pkg / "a" / "__init__.py",
            "mpruner.a.x": pkg / "a" / "x.py", "mpruner.b": pkg / "b.py"}
    global MODULES
    saved, MODULES = MODULES, fake
    try:
        cycle = find_cycle(import_graph(fake))
    finally:
        MODULES = saved
    assert cycle is not None and set(cycle) == {"mpruner.a.x", "mpruner.b"}


def test_every_home_is_in_the_table():
    homes = {stage_of(m) for m in MODULES} - {None, "__main__"}
    assert homes <= set(ALLOWED), f"add {sorted(homes - set(ALLOWED))} to ALLOWED (which homes each may import)"


def test_the_table_itself_has_no_circle():
    assert find_cycle({home: set(allowed) for home, allowed in ALLOWED.items()}) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines; split it by job (limit {MAX_LINES})"


def test_stages_import_only_forward():
    wrong = []
    for module, targets in import_graph().items():
        stage = stage_of(module)
        if stage not in ALLOWED:
            continue
        for target in targets:
            other = stage_of(target)
            if other is not None and other != stage and other not in ALLOWED[stage]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


def test_engine_is_a_package_and_old_modules_are_gone():
    for old in ("cka", "token_cka", "accumulator", "exact", "ops", "_inputs", "reference", "blocks"):
        assert f"mpruner.{old}" not in MODULES, f"mpruner/{old}.py should live in a stage package"
    for name in ("cka_matrix", "cka", "gram", "hsic", "center_gram", "token_cka", "CKAAccumulator", "find_blocks",
                 "BlockList", "reference", "analyze", "remove_layers", "MPruner"):
        assert hasattr(mpruner, name), name

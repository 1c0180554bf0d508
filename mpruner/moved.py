"""Old names that keep working for one release, each with a ``DeprecationWarning`` naming the new one.

Modules moved when the package was laid out one home per job (``mpruner.prune.finetune`` is
now ``mpruner.training.finetune``, ...) are found under their old import path by a finder on
``sys.meta_path``; names renamed or moved out of a package are served by that package's
module ``__getattr__`` (:func:`forward_names`). Nothing here is used by mpruner itself.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Callable, Dict, Tuple

# old module -> the module(s) that now hold its names, searched in order.
OLD_MODULES: Dict[str, Tuple[str, ...]] = {
    "mpruner.prune.finetune": ("mpruner.training.finetune",),
    "mpruner.prune.accelerated": ("mpruner.training.accelerated",),
    "mpruner.prune.sharded": ("mpruner.training.sharded",),
    "mpruner.prune.batch_split": ("mpruner.training.batch_split",),
    "mpruner.prune.distributed": ("mpruner.distributed",),
    "mpruner.prune.report": ("mpruner.prune.outputs",),
    "mpruner.prune.shared": ("mpruner.prune.shared_calibration",),
    "mpruner.prune.demo": ("mpruner.demos.classification", "mpruner.evaluation.accuracy"),
    "mpruner.prune.demo_lm": ("mpruner.demos.language_model",),
    "mpruner.prune.cli": ("mpruner.cli.prune", "mpruner.cli.demo", "mpruner.cli.common"),
    "mpruner.prune.cli_lm": ("mpruner.cli.prune_lm",),
    "mpruner.prune.pipeline_cli": ("mpruner.cli.prune_stages",),
    "mpruner.analysis.cli": ("mpruner.cli.analyze", "mpruner.cli.common", "mpruner.progress"),
    "mpruner.analysis.distributed": ("mpruner.analysis.reduction", "mpruner.distributed"),
    "mpruner.analysis.inputs": ("mpruner.analysis.batches",),
    "mpruner.bench.cli": ("mpruner.cli.bench", "mpruner.bench.suite"),
    "mpruner.bench.report": ("mpruner.bench.tables",),
    "mpruner.engine.inputs": ("mpruner.engine.checks",),
    "mpruner.lm.lora": ("mpruner.training.lora",),
    "mpruner.lm.perplexity": ("mpruner.evaluation.perplexity", "mpruner.data.corpus"),
    "mpruner.lm.batches": ("mpruner.data.corpus",),
    "mpruner.sparsity.report": ("mpruner.sparsity.summary",),
}

# Names that changed along with their module: (old module, old name) -> (module, new name).
OLD_NAMES: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("mpruner.analysis.cli", "add_analyze_parser"): ("mpruner.cli.analyze", "add_parser"),
    ("mpruner.prune.cli", "add_parsers"): ("mpruner.moved", "add_prune_and_demo_parsers"),
    ("mpruner.prune.cli", "cmd_demo"): ("mpruner.cli.demo", "cmd_demo"),
}


def add_prune_and_demo_parsers(sub) -> None:
    """``mpruner.prune.cli.add_parsers`` of 0.1: registers ``prune`` and ``demo``."""
    for command in ("mpruner.cli.prune", "mpruner.cli.demo"):  # by name: this module sits below the CLI
        importlib.import_module(command).add_parser(sub)


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}", DeprecationWarning,
                  stacklevel=stacklevel)


class _ForwardingModule(types.ModuleType):
    """Stands under an old module path; every attribute comes from the new module(s).

    Importing it makes it an attribute of its parent package, which replaces a function of the
    same name there (``mpruner.lm.perplexity`` was both a module and its function): calling the
    module calls that function, so the package still works as before.
    """

    def __init__(self, name: str, targets: Tuple[str, ...]):
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self._targets = targets
        parent, _, child = name.rpartition(".")
        shadowed = getattr(sys.modules.get(parent), child, None)
        if isinstance(shadowed, _ForwardingModule):  # imported before: it holds the function
            shadowed = shadowed._shadowed
        self._shadowed = None if isinstance(shadowed, types.ModuleType) else shadowed

    def __call__(self, *args, **kwargs):
        if self._shadowed is None:
            raise TypeError(f"module {self.__name__!r} is not callable")
        return self._shadowed(*args, **kwargs)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        renamed = OLD_NAMES.get((self.__name__, attr))
        if renamed is not None:
            return getattr(importlib.import_module(renamed[0]), renamed[1])
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute "
                             f"{attr!r}")


class _OldModuleLoader(importlib.abc.Loader):
    def __init__(self, targets: Tuple[str, ...]):
        self.targets = targets

    def create_module(self, spec):
        _warn(spec.name, " / ".join(self.targets), stacklevel=6)
        return _ForwardingModule(spec.name, self.targets)  # every name is the new module's very object

    def exec_module(self, module) -> None:
        """Nothing to run: the module is the new one (or forwards to it)."""


class OldModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old path of a moved module (``OLD_MODULES``)."""

    def find_spec(self, fullname, path=None, target=None):
        targets = OLD_MODULES.get(fullname)
        if targets is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _OldModuleLoader(targets))


def install_finder() -> None:
    if not any(isinstance(f, OldModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(OldModuleFinder())


def forward_names(package: str, moved: Dict[str, Tuple[str, str]]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``moved[name] = (new module, new name)``."""

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, new = moved[name]
        _warn(f"{package}.{name}", f"{module}.{new}", stacklevel=3)
        return getattr(importlib.import_module(module), new)

    return __getattr__

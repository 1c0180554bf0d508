"""What every ``mpruner`` subcommand shares: argument types, checks made before anything
loads, ``module:factory`` specs, and library messages in the command line's words."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_out_dir(path: str, flag: str = "--out") -> None:
    """Refuses an output directory that cannot be created, before anything slow runs."""
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{flag} {path!r} is an existing file, not a directory; pass a directory (it is created)")
    parent = p
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r} cannot be created: {parent!r} is a file")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r} cannot be created: {parent!r} is not writable")


def check_source(spec: str, flag: str, kind: str) -> None:
    """Checks that ``--flag spec`` names something that exists: a ``file.py`` of ``file.py:factory``,
    a Hugging Face directory (``kind="model"``) or a data file (``kind="file"``). Cheap: no import, no load."""
    if is_factory(spec):
        module_name, _, attr = spec.rpartition(":")
        if not module_name or not attr:
            raise ValueError(f"{flag} {spec!r}: expected module:factory or path/to/file.py:factory")
        if module_name.endswith(".py") and not os.path.isfile(module_name):
            raise FileNotFoundError(f"{flag} {spec!r}: no file {module_name!r}")
        return
    if kind == "model":
        if not os.path.isdir(spec):
            raise FileNotFoundError(f"{flag} {spec!r} is neither a directory (a Hugging Face model) nor "
                                    "module:factory")
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise FileNotFoundError(f"{flag} {spec!r} has no config.json; pass a Hugging Face model directory "
                                    "(save_pretrained) or module:factory")
    elif not os.path.isfile(spec):
        raise FileNotFoundError(f"{flag} {spec!r}: no such file (a text/CSV file, or module:factory)")


# Python argument spellings in library messages -> this command's flags.
CLI_SPELLINGS = (("unbiased=False", "--biased"), ("pass column=<name> (--column on the command line)",
                                                   "pass --column <name>"),
                 ("max_batches", "--max-batches"))


def cli_message(error: BaseException) -> str:
    """A library error message in the command line's own words."""
    text = str(error)
    if text.startswith("layers="):  # "layers='x': no such block list" names the --layers value
        text = "--layers " + text[len("layers="):]
    for python, flag in CLI_SPELLINGS:
        text = text.replace(python, flag)
    return text


def auto_layers(model, layers, say, command: str):
    """``--layers auto`` on a model no adapter knows: name the container it falls back to
    (its only nn.Sequential/nn.ModuleList of blocks) in a line of its own, and use it by name."""
    if layers != "auto":
        return layers
    import warnings

    from ..adapters import find_blocks

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # said below, in the command's words
            lists = find_blocks(model)
    except TypeError:
        return layers  # the command's own call raises, listing the candidates
    if lists and lists[0].adapter == "generic" and lists[0].name:
        say(f"mpruner {command}: no adapter knows {type(model).__name__}; using its only nn.Sequential/"
            f"nn.ModuleList of two or more blocks, {lists[0].name!r} ({len(lists[0])} blocks); "
            f"--layers NAME picks another")
        return lists[0].name
    return layers


def is_factory(spec: str) -> bool:
    return ":" in spec and not os.path.exists(spec)


def load_factory(spec: str, option: str, call: bool = True):
    """``module:name`` or ``file.py:name`` -> the object, called if callable (and ``call``)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"{option} {spec!r}: expected module:factory or path/to/file.py:factory")
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise FileNotFoundError(f"{option} {spec!r}: no file {module_name!r}")
        unique = f"_mpruner_factory_{abs(hash(os.path.abspath(module_name)))}"
        module_spec = importlib.util.spec_from_file_location(unique, module_name)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[unique] = module
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the user
        module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{option} {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj() if call and callable(obj) and not _is_module(obj) else obj


def _is_module(obj) -> bool:
    import torch.nn as nn

    return isinstance(obj, nn.Module)


def threshold_value(value: str):
    """argparse type of --threshold: 'auto' or a number in (0, 1]."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'auto', got {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"a CKA threshold is in (0, 1] (or 'auto'), got {number}")
    return number


def tolerance_value(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def check_resume(args) -> None:
    if args.resume and not os.path.isfile(os.path.join(args.out, "checkpoint", "state.json")):
        raise ValueError(f"--resume: there is no checkpoint in {os.path.join(args.out, 'checkpoint')} to continue "
                         f"from; run without --resume to start, or pass the --out of the interrupted run")


# --tolerance's default depends on the metric: one accuracy point, or 10% more perplexity.
TOLERANCE_DEFAULTS = {"accuracy": 0.01, "perplexity": 0.1}


def tolerance_of(args) -> float:
    """--tolerance, or its default for the metric that judges this run."""
    if args.tolerance is not None:
        return args.tolerance
    causal = getattr(args, "task", "classification") == "causal-lm"
    return TOLERANCE_DEFAULTS["perplexity" if causal else "accuracy"]

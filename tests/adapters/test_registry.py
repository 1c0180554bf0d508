"""The adapters are the one registry of architectures: every family's traits are declared once,
complete and consistent, and the width pruner and perplexity never name a family themselves."""
import ast
import pathlib

import pytest
import torch

from tests.helpers import surgery_models as zoo
import mpruner
import mpruner.adapters as adapters
from mpruner.adapters import (ADAPTERS, SUPPORTED_HF_MODEL_TYPES, AttentionLayout, WidthLayout, adapter_for_model_type,
                              family_traits, width_model_types)
from mpruner.adapters.hf_common import HFAdapter

HF_ADAPTERS = [a for a in ADAPTERS if issubclass(a, HFAdapter)]
PACKAGE = pathlib.Path(mpruner.__file__).parent
# The homes that must read families from the registry instead of naming them.
FAMILY_BLIND = ("width", "evaluation")
# The families trained with a BOS token per document (the list perplexity used to keep itself).
BOS = {"llama", "qwen2", "mistral", "mixtral", "gemma", "gemma2", "qwen3", "phi3"}


def test_every_model_type_belongs_to_exactly_one_adapter():
    owners = {}
    for adapter_class in HF_ADAPTERS:
        for model_type in adapter_class.model_types:
            owners.setdefault(model_type, []).append(adapter_class.__name__)
    assert {t: o for t, o in owners.items() if len(o) > 1} == {}
    assert len(SUPPORTED_HF_MODEL_TYPES) == len(set(SUPPORTED_HF_MODEL_TYPES)) == len(owners)
    for model_type, (owner,) in owners.items():
        assert adapter_for_model_type(model_type).__name__ == owner
        assert family_traits(model_type).adapter is adapter_for_model_type(model_type)


def test_adapter_names_are_unique_and_every_adapter_is_exported():
    names = [a.name for a in ADAPTERS]
    assert len(names) == len(set(names))
    for adapter_class in ADAPTERS:
        assert getattr(adapters, adapter_class.__name__) is adapter_class
        assert adapter_class.__name__ in adapters.__all__
    assert all(hasattr(adapters, name) for name in adapters.__all__)


@pytest.mark.parametrize("adapter_class", HF_ADAPTERS, ids=lambda a: a.__name__)
def test_traits_are_declared_with_the_right_types(adapter_class):
    assert isinstance(adapter_class.name, str) and adapter_class.name != "?"
    assert adapter_class.model_types and all(isinstance(t, str) for t in adapter_class.model_types)
    assert adapter_class.container_suffixes
    assert isinstance(adapter_class.expects_bos, bool)
    assert adapter_class.width_layout is None or isinstance(adapter_class.width_layout, WidthLayout)


def test_bos_rule_is_unchanged():
    assert {t for t in SUPPORTED_HF_MODEL_TYPES if family_traits(t).expects_bos} == BOS


WIDTH_LAYOUTS = [(t, family_traits(t).width) for t in width_model_types()]


@pytest.mark.parametrize("model_type, layout", WIDTH_LAYOUTS, ids=[t for t, _ in WIDTH_LAYOUTS])
def test_width_layout_is_complete(model_type, layout):
    from mpruner.width.hidden import HIDDEN_ROUTINES

    assert layout.mlp_roots and all(s.startswith(".") for s in layout.mlp_roots)
    assert layout.hidden_routine in HIDDEN_ROUTINES
    if not layout.trace_whole_model:  # pruned MLP by MLP: the module, its marker and its output are named
        assert layout.mlp_module and layout.mlp_marker and layout.mlp_output
    if layout.heads_shrink:  # heads cut on their own need the projections named
        assert isinstance(layout.attention, AttentionLayout)
    assert layout.hidden_takes_heads == (not layout.heads_shrink)


@pytest.mark.parametrize("model_type", width_model_types())
def test_width_layout_matches_a_real_model_of_the_family(model_type):
    """The names a layout declares exist in a tiny model of each width-capable family."""
    from mpruner.width import hf

    model, _ = zoo.hf_model(model_type)
    layout = family_traits(model).width
    layers = model.config.num_hidden_layers
    assert hasattr(model.config, layout.mlp_width_field)
    assert len(hf.mlp_roots(model, layout)) == layers
    if not layout.trace_whole_model:
        mlps = hf.mlps(model, layout)
        assert len(mlps) == layers and all(isinstance(hf.mlp_output(m, layout), torch.nn.Module) for m in mlps)
    if layout.attention is not None:
        attention = hf.attention_modules(model, layout)
        assert len(attention) == layers and all(isinstance(a.head_dim, int) for a, _, _, _ in attention)


def test_families_without_an_adapter_have_no_traits():
    assert family_traits("electra") is None and adapter_for_model_type("electra") is None
    assert family_traits(torch.nn.Linear(2, 2)) is None


# --- no family named outside the registry ----------------------------------------------------------

FAMILY_WORDS = frozenset(SUPPORTED_HF_MODEL_TYPES) | {a.name for a in ADAPTERS}


def _mentions_family(node) -> bool:
    return ((isinstance(node, ast.Name) and node.id in ("family", "model_type"))
            or (isinstance(node, ast.Attribute) and node.attr in ("family", "model_type")))


def family_violations(source: str, filename: str = "<source>"):
    """String constants that spell a registered model_type or adapter name, and comparisons of a
    family or model_type with anything but None: ``(line, what)`` per violation."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FAMILY_WORDS:
            found.append((node.lineno, f"string {node.value!r}"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            others = [o for o in operands if not _mentions_family(o)]
            if len(others) < len(operands) and not all(isinstance(o, ast.Constant) and o.value is None
                                                       for o in others):
                found.append((node.lineno, f"comparison {ast.unparse(node)!r}"))
    return found


FAMILY_BLIND_FILES = sorted(p for home in FAMILY_BLIND for p in (PACKAGE / home).rglob("*.py"))


@pytest.mark.parametrize("path", FAMILY_BLIND_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_family_is_named_outside_the_registry(path):
    found = family_violations(path.read_text(), str(path))
    assert not found, (f"{path.relative_to(PACKAGE)} names a family instead of reading its traits from "
                       f"mpruner.adapters (declare it on the adapter): " + "; ".join(f"line {n}: {w}" for n, w in found))


@pytest.mark.parametrize("snippet", [
    'if family == "bert":\n    pass\n',
    'BOS_FAMILIES = ("llama", "qwen2")\n',
    'x = model.config.model_type in TABLE\n',
    'suffix = {"gpt2": ".mlp.c_fc"}\n',
])
def test_the_scan_catches_a_family_branch(snippet):
    assert family_violations(snippet)


def test_the_scan_lets_none_checks_and_messages_through():
    assert not family_violations('if model_type is None:\n    x = f"model_type {model_type!r} unknown"\n')

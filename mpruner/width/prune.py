"""``prune_width``: structured width pruning on Torch-Pruning's BasePruner."""
from __future__ import annotations

import copy
from typing import Iterable, List, Optional, Union

import torch
import torch.nn as nn

from ..adapters import resolve_adapter
from ..surgery.record import append_width_step
from ..surgery.reshape import changed_shapes, module_shapes
from ..surgery.stats import run_forward
from . import hf
from .hidden import HIDDEN_ROUTINES

# Importance names accepted besides Torch-Pruning's own class names and instances.
IMPORTANCES = {"magnitude": ("MagnitudeImportance", {"p": 2}), "l2": ("MagnitudeImportance", {"p": 2}),
               "l1": ("MagnitudeImportance", {"p": 1}), "lamp": ("LAMPImportance", {"p": 2}),
               "fpgm": ("FPGMImportance", {}), "bn_scale": ("BNScaleImportance", {}),
               "random": ("RandomImportance", {})}


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ImportError("mpruner.width.prune_width needs Torch-Pruning: pip install torch-pruning "
                          "(or pip install 'mpruner[width]')") from None
    return torch_pruning


def _importance(tp, importance):
    if isinstance(importance, tp.importance.Importance):
        return importance
    if isinstance(importance, str):
        if importance in IMPORTANCES:
            cls, kwargs = IMPORTANCES[importance]
            return getattr(tp.importance, cls)(**kwargs)
        cls = getattr(tp.importance, importance, None)
        if isinstance(cls, type) and issubclass(cls, tp.importance.Importance):
            return cls()
    raise ValueError(f"importance must be one of {sorted(IMPORTANCES)}, a torch_pruning.importance class name "
                     f"(e.g. 'GroupMagnitudeImportance') or an Importance object, got {importance!r}")


def _check(model, ratio, ignored_layers, round_to, prune_heads):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"ratio must be a fraction in (0, 1) of the channels to remove, got {ratio!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be None or an integer >= 1, got {round_to!r}")
    if prune_heads not in ("auto", True, False):
        raise ValueError(f"prune_heads must be 'auto', True or False, got {prune_heads!r}")
    modules = dict(model.named_modules())
    out = []
    for item in ignored_layers or []:
        if isinstance(item, str):
            if item not in modules:
                raise ValueError(f"ignored_layers: {item!r} is not a module of this model")
            out.append(modules[item])
        elif isinstance(item, nn.Module):
            out.append(item)
        else:
            raise TypeError(f"ignored_layers takes module names or modules, got {type(item).__name__}")
    return out


def _unknown_modules(tp, model) -> List[str]:
    """Modules with parameters of their own that Torch-Pruning has no pruning rule for."""
    known = tp.pruner.function.PrunerBox
    return [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
            if n and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))
            and tp.ops.module2type(m) not in known]


def _explain(tp, model, stage, error) -> RuntimeError:
    unknown = _unknown_modules(tp, model)
    hint = (f"; modules with tensors Torch-Pruning has no pruning rule for: {', '.join(unknown[:6])}{' ...' if len(unknown) > 6 else ''} "
            "(pass them in ignored_layers, or register a torch_pruning customized pruner)") if unknown else ""
    return RuntimeError(f"Torch-Pruning could not {stage} {type(model).__name__}: {type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}{hint}")


def _base_prune(tp, model, example_inputs, imp, ratio, round_to, ignored):
    """One step of Torch-Pruning's BasePruner, local ranking (the same ratio in every group)."""
    try:
        pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp, pruning_ratio=ratio,
                                      ignored_layers=ignored, round_to=round_to, global_pruning=False,
                                      output_transform=_output_tensor)
    except Exception as error:
        raise _explain(tp, model, "trace", error) from error
    try:
        pruner.step()
    except Exception as error:
        raise _explain(tp, model, "prune", error) from error


def _prune_mlp(tp, mlp, layout, hidden, imp, ratio, round_to, ignored):
    """Prunes the intermediate channels of one MLP module (its output projection is kept)."""
    swapped = hf.conv1d_to_linear(mlp)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    first = linears[0]
    example = torch.randn(1, 4, hidden, device=first.weight.device, dtype=first.weight.dtype)
    output = hf.mlp_output(mlp, layout)
    _base_prune(tp, mlp, example, imp, ratio, round_to, [output] + list(ignored))
    hf.linear_to_conv1d(mlp, swapped)


def _output_tensor(out):
    """The tensor Torch-Pruning traces back from: logits / last hidden state / the first tensor."""
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value.sum()
    if isinstance(out, torch.Tensor):
        return out.sum()
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else []
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.sum()
    raise TypeError(f"the model returned a {type(out).__name__} without a tensor to trace")


def _classifier_layers(model, example_inputs) -> List[nn.Module]:
    """For a plain network: the Linear layers producing the output (their out_features = output width)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        out = run_forward(model, example_inputs)
        model.train(was)
    out = getattr(out, "logits", out)
    width = out.shape[-1] if isinstance(out, torch.Tensor) else None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    chosen = [m for m in linears if m.out_features == width]
    return chosen or linears[-1:]


def prune_width(model: nn.Module, example_inputs, ratio: float = 0.25, importance="magnitude",
                ignored_layers: Optional[Iterable[Union[str, nn.Module]]] = None, round_to: Optional[int] = None,
                inplace: bool = False, *, prune_heads="auto", prune_hidden: bool = False) -> nn.Module:
    """Structured width pruning with Torch-Pruning's ``BasePruner`` (local ranking, one step).

    Args:
        model: a Hugging Face model of a family whose adapter declares a width layout
            (``mpruner.adapters.width_model_types()``: BERT/RoBERTa, LLaMA/Qwen2/Mistral/Qwen3,
            GPT-2), or a CNN (EfficientNet-Lite, ResNet, ...). Untouched unless ``inplace=True``;
            on any error it is left as it was.
        example_inputs: one batch for Torch-Pruning's tracing (a dict is passed as keyword
            arguments, a tuple positionally, a tensor as the argument).
        ratio: fraction of the channels removed in every prunable group: MLP intermediate
            channels (and attention heads, see ``prune_heads``) of a transformer, conv channels of
            a CNN.
        importance: ``"magnitude"`` (L2), ``"l1"``, ``"lamp"``, ``"fpgm"``, ``"bn_scale"``,
            ``"random"``, a ``torch_pruning.importance`` class name, or an Importance object.
        ignored_layers: module names or modules whose output channels stay (the classifier,
            heads and embeddings are always kept).
        round_to: keep channel counts multiples of this (Torch-Pruning's ``round_to``).
        inplace: prune ``model`` itself (its object is updated only once everything succeeded).
        prune_heads: ``"auto"``: whole attention heads (the same number in every layer) where
            the config can express it (LLaMA/Qwen2/Mistral/Qwen3: ``head_dim``); BERT/RoBERTa/GPT-2
            configs derive the head size from the hidden size, and transformers >= 5 has no
            ``pruned_heads``, so there only MLP channels are pruned. ``True`` insists (error where
            impossible), ``False`` prunes MLP channels only.
        prune_hidden: also prune the hidden size (the residual stream) by ``ratio``: for the
            LLaMA family (embedding, norms, every projection's hidden side and ``lm_head``, ranked
            by their joint L2 norm; the heads keep their size). BERT/RoBERTa configs derive the
            head size from hidden_size / num_heads, so there (and for GPT-2) ``round(ratio * heads)``
            heads go from every layer together with the same share of hidden channels (the head
            size stays). CNNs always have all their channels pruned.

    Returns:
        The pruned model. HF models: config (``intermediate_size``/``n_inner``,
        ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_size``) and each
        attention module's head counts repaired, so ``save_pretrained`` -> ``from_pretrained``
        reloads it. Others: the new shapes are in the removal record, so ``save_pruned`` ->
        ``load_pruned(path, factory)`` rebuilds it.
    """
    ignored = _check(model, ratio, ignored_layers, round_to, prune_heads)
    tp = _torch_pruning()
    imp = _importance(tp, importance)
    layout = hf.layout_of(model)  # the family's WidthLayout, declared by its adapter; None: not Hugging Face
    if prune_hidden and layout is not None and layout.hidden_takes_heads and prune_heads is False:
        raise ValueError(f"prune_hidden=True on a {model.config.model_type} model removes heads with the hidden "
                         "channels (the config derives the head size from hidden_size / num_heads, so both shrink "
                         "together): drop prune_heads=False")
    heads = False
    if layout is not None:
        can = layout.heads_shrink and layout.attention is not None
        if prune_heads is True and not can and not (layout.hidden_takes_heads and prune_hidden):
            raise ValueError(f"prune_heads=True: a {model.config.model_type} config derives the head size from "
                             "hidden_size / num_heads (and this transformers has no pruned_heads), so a model with "
                             "fewer heads would not reload with from_pretrained unless the hidden size shrinks with "
                             "them: pass prune_hidden=True too, or use prune_heads='auto' or False")
        heads = can and prune_heads in ("auto", True)
    # Work on a copy: the caller's model is only replaced at the end, so no error can leave it half pruned.
    index = {id(m): n for n, m in model.named_modules()}
    work = copy.deepcopy(model)
    table = dict(work.named_modules())
    ignored = [table[index[id(m)]] for m in ignored if id(m) in index]
    before = module_shapes(work)
    head_dim = None
    if layout is None:
        ignored += _classifier_layers(work, example_inputs)
        _base_prune(tp, work, example_inputs, imp, ratio, round_to, ignored)
    elif layout.trace_whole_model:
        roots = {id(m) for m in hf.mlp_roots(work, layout)}
        ignored += [m for m in work.modules() if isinstance(m, (nn.Linear, nn.Embedding)) and id(m) not in roots]
        _base_prune(tp, work, example_inputs, imp, ratio, round_to, ignored)
    else:
        # Each MLP (hidden in, hidden out) is pruned on its own by the same BasePruner, the heads are
        # cut with Torch-Pruning's prune functions, and the hidden size (prune_hidden) last.
        hidden = work.config.hidden_size
        for mlp in hf.mlps(work, layout):
            _prune_mlp(tp, mlp, layout, hidden, imp, ratio, round_to,
                       [m for m in ignored if m in set(mlp.modules())])
        attention = hf.attention_modules(work, layout)
        if heads:
            for attn, _, _, _ in attention:
                head_dim = attn.head_dim
                hf.prune_heads(tp, attn, layout.attention, ratio, hidden)
            head_dim = head_dim or getattr(work.config, "head_dim", None)
        head_dim = head_dim or (attention[0][0].head_dim if attention else None)
    if layout is not None and prune_hidden:
        HIDDEN_ROUTINES[layout.hidden_routine](tp, work, ratio, round_to)
    if layout is not None:
        hf.repair(work, layout, head_dim, prune_hidden)
    try:
        with torch.no_grad():
            was = work.training
            work.eval()
            run_forward(work, example_inputs)
            work.train(was)
    except Exception as error:
        raise _explain(tp, work, "produce a working model from", error) from error
    changed = changed_shapes(before, module_shapes(work))
    try:
        adapter = resolve_adapter(work)
        adapter_name, lists = adapter.name, adapter.block_lists()
    except TypeError:
        adapter_name, lists = None, []
    append_width_step(work, adapter_name, lists, changed)
    if not inplace:
        return work
    model.__dict__.update(work.__dict__)  # the caller's object takes the pruned modules, config and record
    return model

"""What the other stages need to know of a Hugging Face family, declared once on its adapter.

Depth pruning asks an adapter where the blocks are; the width pruner and ``perplexity`` ask
it two more things, as plain data on the adapter class:

- ``expects_bos``: whether the family was trained with a BOS token at the start of every
  document (a perplexity window without one is then out of distribution);
- ``width``: a :class:`WidthLayout`, how ``mpruner.width.prune_width`` prunes the family's MLP
  channels, heads and hidden size so that plain ``from_pretrained`` reloads the result (``None``:
  width pruning does not handle the family).

These are descriptions only: module-name suffixes, config field names and the names of the
routines in ``mpruner.width`` that apply. Nothing here imports the width pruner or Torch-Pruning;
the data flows forward, and the width pruner reads the description.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["AttentionLayout", "FamilyTraits", "WidthLayout"]


@dataclass(frozen=True)
class AttentionLayout:
    """Separate q/k/v/o projections of one attention module per layer, heads of ``head_dim``.

    Attributes:
        module_suffix: qualified-name suffix of the attention modules (``".self_attn"``); each has
            a ``head_dim`` attribute and the four projections below.
        q, k, v, o: attribute names of the query/key/value/output ``nn.Linear`` projections.
    """

    module_suffix: str
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"


@dataclass(frozen=True)
class WidthLayout:
    """How ``prune_width`` prunes one family and repairs its config.

    Attributes:
        mlp_roots: qualified-name suffixes of the MLP up-projections whose output channels are the
            MLP width (``".mlp.gate_proj"``); Torch-Pruning's group of each root holds the rest of
            its MLP (the up-projection beside it, the down-projection's inputs).
        mlp_width_field: the config field that holds the MLP width (``"intermediate_size"``;
            GPT-2: ``"n_inner"``), rewritten after pruning so ``from_pretrained`` rebuilds it.
        trace_whole_model: Torch-Pruning traces the whole model with everything but the MLP
            roots ignored (a plain Linear graph such as BERT's). ``False``: each MLP module is
            traced and pruned on its own, because the full graph cannot be traced (GPT-2 splits
            its fused ``c_attn`` output) or takes minutes (LLaMA's rotary/GQA graph).
        mlp_module: with ``trace_whole_model=False``, the qualified-name suffix of a layer's MLP
            module (``".mlp"``; hidden size in, hidden size out) ...
        mlp_marker: ... the attribute that tells this family's MLP from another module of that
            name (``"gate_proj"``, ``"c_fc"``) ...
        mlp_output: ... and its output projection, which keeps its output channels (the
            residual stream) when the MLP is pruned on its own.
        attention: the attention modules, when their head counts are rewritten after pruning
            (``num_heads``, ``num_key_value_heads``, ``head_dim`` on the modules and the config).
        heads_shrink: whether a layer may lose whole heads while the hidden size stays, and the
            model still reload with plain ``from_pretrained``. True where the config carries
            ``head_dim`` (LLaMA-style). BERT and GPT-2 configs derive the head size as
            hidden_size / num_heads, and transformers >= 5 dropped ``config.pruned_heads``: fewer
            heads of the same size cannot be described there, so heads only go together with the
            matching share of the hidden size (see ``hidden_takes_heads``).
        hidden_routine: name of the function in ``mpruner.width`` that prunes the hidden size
            (the residual stream) of this family, for ``prune_hidden=True``.
    """

    mlp_roots: Tuple[str, ...]
    mlp_width_field: str
    hidden_routine: str
    trace_whole_model: bool = False
    mlp_module: Optional[str] = None
    mlp_marker: Optional[str] = None
    mlp_output: Optional[str] = None
    attention: Optional[AttentionLayout] = None
    heads_shrink: bool = False

    @property
    def hidden_takes_heads(self) -> bool:
        """Whether pruning the hidden size removes whole heads with it: where the config derives
        the head size from hidden_size / num_heads (``heads_shrink`` False), the only narrower
        model that reloads has fewer heads of the same size, and the same share of the hidden
        channels."""
        return not self.heads_shrink


@dataclass(frozen=True)
class FamilyTraits:
    """One Hugging Face ``model_type`` and what its adapter declares about it.

    Attributes:
        model_type: the ``config.model_type`` looked up.
        family: the adapter's ``name`` (``"llama"`` for LLaMA, Mistral and Qwen2).
        expects_bos: see the module docstring.
        width: see :class:`WidthLayout`; ``None`` where width pruning does not handle the family.
        adapter: the adapter class that declares them.
        causal_lm: a decoder-only language model (see ``HFAdapter.causal_lm``).
        residual_projection: where a linear replacement folds (see ``HFAdapter.residual_projection``).
    """

    model_type: str
    family: str
    expects_bos: bool
    width: Optional[WidthLayout]
    adapter: type
    causal_lm: bool = False
    residual_projection: Optional[str] = None

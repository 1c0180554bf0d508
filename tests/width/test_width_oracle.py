"""prune_width against independent computations, per family: which heads and channels go, and
that the pruned model computes what the original computes with exactly those removed.

The oracle for "the same function": removing a channel (or a head) equals zeroing the weights
that read it (the down projection's input column, ``o_proj``'s input columns, the next conv's
input channel) in the unpruned model. The kept channels are found by matching weights exactly,
so a wrong index map, a group mapping broken by GQA, or a shifted slice all change the logits.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

from mpruner.width import prune_width

pytest.importorskip("torch_pruning")
T = pytest.importorskip("transformers")

IDS = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))}


def llama(gqa, seed=0):
    """LLaMA with 4 heads of 12 (MHA), or Qwen2 with 8 heads of 6 sharing 4 KV heads (GQA, q/k/v biases)."""
    torch.manual_seed(seed)
    cls, cfg = (T.Qwen2ForCausalLM, T.Qwen2Config) if gqa else (T.LlamaForCausalLM, T.LlamaConfig)
    return cls(cfg(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=8 if gqa else 4, num_key_value_heads=4, max_position_embeddings=64)).eval()


def matched(pruned_cols: torch.Tensor, original_cols: torch.Tensor):
    """Index in ``original_cols`` (columns of a 2-D tensor) of each column of ``pruned_cols``, by equality."""
    out = []
    for j in range(pruned_cols.shape[1]):
        hits = [c for c in range(original_cols.shape[1]) if torch.equal(pruned_cols[:, j], original_cols[:, c])]
        assert len(hits) == 1, f"column {j} matches {hits}"
        out.append(hits[0])
    return out


def reference_groups(attn, drop):
    """numpy: the ``drop`` KV groups with the lowest sum of squares over their q/k/v rows and o
    columns (ties: the lower index), as ``prune_heads`` documents."""
    hd = attn.head_dim
    q, k, v, o = (getattr(attn, n).weight.detach().double().numpy() for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    kv = k.shape[0] // hd
    per = q.shape[0] // hd // kv
    score = [(q[g * per * hd:(g + 1) * per * hd] ** 2).sum() + (o[:, g * per * hd:(g + 1) * per * hd] ** 2).sum()
             + (k[g * hd:(g + 1) * hd] ** 2).sum() + (v[g * hd:(g + 1) * hd] ** 2).sum() for g in range(kv)]
    return sorted(np.argsort(np.array(score), kind="stable")[:drop].tolist()), per, hd


def masked_reference(model, removed_inner, removed_q_cols):
    """The unpruned model with the removed MLP channels' down-projection columns and the removed
    heads' o_proj columns zeroed: the function the pruned model must compute."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            layer.mlp.down_proj.weight[:, removed_inner[i]] = 0
            layer.self_attn.o_proj.weight[:, removed_q_cols[i]] = 0
    return ref


@pytest.mark.parametrize("gqa", [False, True], ids=["llama-mha", "qwen2-gqa"])
def test_llama_family_heads_and_channels_equal_the_masked_original(gqa):
    model = llama(gqa)
    pruned = prune_width(model, IDS, ratio=0.25)
    removed_inner, removed_q = [], []
    for layer, new in zip(model.model.layers, pruned.model.layers):
        kept = matched(new.mlp.down_proj.weight, layer.mlp.down_proj.weight)
        assert kept == sorted(kept)  # the order of the kept channels is kept
        removed_inner.append([c for c in range(64) if c not in kept])
        attn = layer.self_attn
        total_kv = attn.k_proj.out_features // attn.head_dim
        drop = total_kv - new.self_attn.k_proj.out_features // attn.head_dim
        groups, per, hd = reference_groups(attn, drop)
        assert drop == 1  # round(0.25 * 4 KV heads); the 3 left (and their query heads) divide hidden_size
        q_cols = [c for g in groups for c in range(g * per * hd, (g + 1) * per * hd)]
        removed_q.append(q_cols)
        kept_q = [c for c in range(attn.q_proj.out_features) if c not in q_cols]
        torch.testing.assert_close(new.self_attn.q_proj.weight, attn.q_proj.weight[kept_q], rtol=0, atol=0)
        kept_kv = [c for c in range(attn.k_proj.out_features) if c // hd not in groups]
        torch.testing.assert_close(new.self_attn.v_proj.weight, attn.v_proj.weight[kept_kv], rtol=0, atol=0)
        assert len(removed_inner[-1]) == 16
    assert pruned.config.num_key_value_heads == 3
    assert pruned.config.num_attention_heads == (6 if gqa else 3)
    with torch.no_grad():
        want = masked_reference(model, removed_inner, removed_q)(**IDS).logits
        torch.testing.assert_close(pruned(**IDS).logits, want, rtol=1e-5, atol=1e-5)


def test_head_choice_is_the_weakest_group_and_a_tie_goes_to_the_lower_index():
    """Two KV groups made equally weak (the same weights, scaled down): the lower one goes."""
    model = llama(gqa=True)
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            hd, per = a.head_dim, 2
            for name in ("q_proj", "k_proj", "v_proj"):
                w = getattr(a, name).weight
                rows = per * hd if name == "q_proj" else hd
                w[:rows] *= 0.01
                w[rows:2 * rows] = w[:rows]  # groups 0 and 1 tie exactly
                b = getattr(a, name).bias
                b[rows:2 * rows] = b[:rows]  # (biases are not scored; equal anyway)
            a.o_proj.weight[:, :per * hd] *= 0.01
            a.o_proj.weight[:, per * hd:2 * per * hd] = a.o_proj.weight[:, :per * hd]
    groups, _, _ = reference_groups(model.model.layers[0].self_attn, 1)
    assert groups == [0]  # the oracle's own tie-break, on the planted tie
    pruned = prune_width(model, IDS, ratio=0.25, prune_heads=True)
    for layer, new in zip(model.model.layers, pruned.model.layers):
        # group 0 (q rows 0-11) removed; its tied twin, group 1, kept
        torch.testing.assert_close(new.self_attn.q_proj.weight, layer.self_attn.q_proj.weight[12:], rtol=0, atol=0)


def test_weak_mlp_channels_are_the_ones_removed():
    """Channels scaled down in every weight that reads or writes them rank last under L2."""
    model = llama(gqa=False)
    weak = [3, 10, 11, 20, 33, 40, 41, 42, 50, 51, 52, 55, 58, 60, 62, 63]  # 16 = 0.25 * 64
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[weak] *= 1e-3
            layer.mlp.up_proj.weight[weak] *= 1e-3
            layer.mlp.down_proj.weight[:, weak] *= 1e-3
    pruned = prune_width(model, IDS, ratio=0.25, prune_heads=False)
    for layer, new in zip(model.model.layers, pruned.model.layers):
        kept = matched(new.mlp.down_proj.weight, layer.mlp.down_proj.weight)
        assert kept == [c for c in range(64) if c not in weak]
    assert pruned.config.num_attention_heads == 4  # prune_heads=False keeps every head


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_mlp_only_families_equal_the_masked_original(kind):
    """GPT-2 (Conv1D, swapped to Linear and back) and BERT: MLP channels only under 'auto'."""
    import copy

    torch.manual_seed(0)
    if kind == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
        blocks = lambda m: [(b.mlp.c_proj.weight.T, b) for b in m.transformer.h]  # noqa: E731  (out, in) view
    else:
        model = T.BertForSequenceClassification(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                             num_attention_heads=4, intermediate_size=64)).eval()
        blocks = lambda m: [(b.output.dense.weight, b) for b in m.bert.encoder.layer]  # noqa: E731
    pruned = prune_width(model, IDS, ratio=0.25)
    ref = copy.deepcopy(model)
    for (w, _), (new, _), (ref_w, _) in zip(blocks(model), blocks(pruned), blocks(ref)):
        kept = matched(new, w)
        assert len(kept) == w.shape[1] * 3 // 4 and kept == sorted(kept)
        with torch.no_grad():
            ref_w[:, [c for c in range(w.shape[1]) if c not in kept]] = 0  # a view of the reference's weight
    with torch.no_grad():
        torch.testing.assert_close(pruned(**IDS).logits, ref(**IDS).logits, rtol=1e-5, atol=1e-5)


def test_cnn_channels_equal_the_masked_original():
    """A plain CNN: each conv keeps 3/4 of its filters (the classifier's outputs stay); zeroing the
    next layer's inputs from the removed filters computes the same logits."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 9, 9)
    pruned = prune_width(model, x, ratio=0.25)
    assert pruned[6].out_features == 5
    kept1 = matched(pruned[0].weight.flatten(1).T, model[0].weight.flatten(1).T)
    kept2 = matched(pruned[2].weight.flatten(1).T, model[2].weight[:, kept1].flatten(1).T)
    assert len(kept1) == len(kept2) == 6
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref[2].weight[:, [c for c in range(8) if c not in kept1]] = 0
        ref[6].weight[:, [c for c in range(8) if c not in kept2]] = 0
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-5, atol=1e-5)

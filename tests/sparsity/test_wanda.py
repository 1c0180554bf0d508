"""mpruner.sparsity: Wanda's exact zero set against an independent computation, masks, errors."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import mpruner
from mpruner import sparsity

transformers = pytest.importorskip("transformers")


def tiny_bert(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32,
                                  initializer_range=0.5)  # large weights: later blocks see what earlier ones zeroed
    return transformers.BertForSequenceClassification(cfg).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, initializer_range=0.5)
    return transformers.GPT2LMHeadModel(cfg).eval()


def text_batches(seed=1, n=3, b=4, t=9):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 64, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        for row in range(b):  # right padding of varying length, padding ids random too
            mask[row, t - row * 2:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()) for _ in range(3)])


# ---------------------------------------------------------------- independent reference
def _rows(module, w):
    if type(module).__name__ == "Conv1D":
        return w.T
    if w.ndim == 4:
        return w[:, :, 0, 0]
    return w


def reference_inputs(model, batches, names):
    """All inputs of the named layers, as (tokens, in) float64 numpy arrays, padding dropped."""
    mods = dict(model.named_modules())
    seen = {n: [] for n in names}
    current = {}

    def hook(name):
        def f(mod, args, out):
            x = args[0].detach().double()
            if isinstance(mod, nn.Conv2d):
                x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            elif "mask" in current and x.dim() == 3:
                x = x[current["mask"].bool()]
            seen[name].append(x.reshape(-1, x.shape[-1]).numpy())
        return f

    hs = [mods[n].register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        for b in batches:
            if isinstance(b, dict):
                current["mask"] = b["attention_mask"]
                model(**b)
            else:
                model(b)
    for h in hs:
        h.remove()
    return {n: np.concatenate(v) for n, v in seen.items()}


def reference_zero_set(w_rows, x, sparsity, nm):
    """Indices (row, col) to zero, by numpy: per row the k lowest |W| * ||X||, or per M-group the M-N lowest."""
    score = np.abs(w_rows) * np.sqrt((x ** 2).sum(0))[None, :]
    zeros = set()
    for i, row in enumerate(score):
        if nm is None:
            k = int(round(sparsity * row.size))
            zeros.update((i, int(j)) for j in np.argsort(row, kind="stable")[:k])
        else:
            n, m = nm
            for g in range(row.size // m):
                zeros.update((i, g * m + int(j)) for j in np.argsort(row[g * m:(g + 1) * m], kind="stable")[:m - n])
    return zeros


def reference_wanda(model, batches, groups, sparsity, nm, sequential):
    """Zero sets per layer, by an independent loop: zeroing weights of a plain copy block by block."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    result = {}
    all_names = [n for _, names in groups for n in names]
    xs = None if sequential else reference_inputs(ref, batches, all_names)
    for _, names in groups:
        if sequential:
            xs = reference_inputs(ref, batches, names)
        for n in names:
            w = mods[n].weight.detach().double().numpy()
            zs = reference_zero_set(_rows(mods[n], w), xs[n], sparsity, nm)
            result[n] = zs
        if sequential:
            for n in names:
                w = mods[n].weight.data
                rows = _rows(mods[n], w)
                for i, j in result[n]:
                    rows[i, j] = 0
    return result


def zero_set(model, name):
    mod = dict(model.named_modules())[name]
    w = _rows(mod, sparsity.layers.effective_weight(mod).detach())
    return {(int(i), int(j)) for i, j in (w == 0).nonzero().tolist()}


@pytest.mark.parametrize("pattern,sequential", [(None, True), (None, False), ("2:4", True), ("2:4", False)])
@pytest.mark.parametrize("maker", [tiny_bert, tiny_gpt2])
def test_zero_set_matches_independent_computation(maker, pattern, sequential):
    model, batches = maker(), text_batches()
    nm = sparsity.parse_pattern(pattern)
    groups = sparsity.target_layers(model)
    expected = reference_wanda(model, batches, groups, 0.5, nm, sequential)
    out = sparsity.wanda(model, batches, pattern=pattern, sequential=sequential, progress=False)
    for name, zs in expected.items():
        assert zero_set(out, name) == zs, name
    assert not sparsity.has_masks(model)  # the caller's model is untouched


def test_unstructured_other_fraction_and_conv1x1():
    model = conv_net()
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 8, 5, 5, generator=g) for _ in range(2)]
    groups = sparsity.target_layers(model)
    assert [n for _, names in groups for n in names] == ["0.0", "1.0", "2.0"]
    expected = reference_wanda(model, batches, groups, 0.3, None, True)
    out = sparsity.wanda(model, batches, sparsity=0.3, progress=False)
    for name, zs in expected.items():
        assert zero_set(out, name) == zs
        assert len(zs) == 8 * round(0.3 * 8)


def test_sequential_differs_from_one_pass():
    model, batches = tiny_bert(layers=3), text_batches()
    a = sparsity.wanda(model, batches, sequential=True, progress=False)
    b = sparsity.wanda(model, batches, sequential=False, progress=False)
    later = [n for _, ns in sparsity.target_layers(model)[1:] for n in ns]
    assert any(zero_set(a, n) != zero_set(b, n) for n in later)
    first = sparsity.target_layers(model)[0][1]
    assert all(zero_set(a, n) == zero_set(b, n) for n in first)  # block 0 sees the dense model either way


def test_padding_is_excluded():
    model, batches = tiny_bert(), text_batches()
    scrambled = []  # same real tokens, different ids at padded positions
    for b in batches:
        ids = b["input_ids"].clone()
        ids[b["attention_mask"] == 0] = 1
        scrambled.append({"input_ids": ids, "attention_mask": b["attention_mask"]})
    from mpruner.sparsity.wanda import collect_norms

    names = [n for _, ns in sparsity.target_layers(model) for n in ns]
    na = collect_norms(model, batches, names)
    nb = collect_norms(model, scrambled, names)
    for n in names:  # BERT's real tokens do not attend to padding, so only masking could differ
        torch.testing.assert_close(na[n], nb[n], rtol=1e-9, atol=1e-9)
    unmasked = collect_norms(model, [{"input_ids": b["input_ids"]} for b in scrambled], names)
    assert not torch.allclose(unmasked[names[0]], nb[names[0]])


def test_masks_survive_finetuning():
    model, batches = tiny_bert(), text_batches()
    out = sparsity.wanda(model, batches, progress=False)
    before = {n: zero_set(out, n) for _, ns in sparsity.target_layers(out) for n in ns}
    train = [{**b, "labels": torch.tensor([0, 1, 0, 1])} for b in batches]
    name = "bert.encoder.layer.0.intermediate.dense"
    orig = dict(out.named_modules())[name].weight_orig.detach().clone()
    mpruner.Finetuner(train, lr=1e-2, weight_decay=0.0, progress=False)(out)
    assert not torch.equal(orig, dict(out.named_modules())[name].weight_orig.detach())  # it did train
    out(**batches[0])  # the forward pass recomputes weight = weight_orig * mask
    for n, zs in before.items():
        assert zero_set(out, n) >= zs


def test_sparse_bert_saves_and_reloads_with_its_zeros(tmp_path):
    model, batches = tiny_bert(), text_batches()
    out = sparsity.wanda(model, batches, pattern="2:4", progress=False)
    with torch.no_grad():
        want = out(**batches[0]).logits
    rep = sparsity.report(out)
    sparsity.make_permanent(out)
    assert not sparsity.has_masks(out)
    out.save_pretrained(tmp_path)
    back = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert sparsity.report(back).total_zeros == rep.total_zeros
    with torch.no_grad():
        torch.testing.assert_close(back(**batches[0]).logits, want)
    masks = sparsity.masks_from_zeros(back)
    assert set(masks) == {n for _, ns in sparsity.target_layers(back) for n in ns}


def test_report_table_and_dict():
    out = sparsity.wanda(tiny_gpt2(), text_batches(), pattern="2:4", progress=False)
    rep = sparsity.report(out)
    d = rep.to_dict()
    assert d["total_zeros"] >= sum(  # GPT-2 biases start at zero too
        l["zeros"] for l in d["layers"])
    attn = [l for l in d["layers"] if l["name"].endswith("attn.c_attn")]
    assert attn and all(abs(l["sparsity"] - 0.5) < 1e-12 for l in attn)
    assert "all parameters" in rep.table()
    assert sparsity.count_nonzero(out) == d["nonzero"]


def test_inplace_sparsifies_the_model_itself():
    model = tiny_bert()
    out = sparsity.wanda(model, text_batches(), inplace=True, progress=False)
    assert out is model and sparsity.has_masks(model)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(pattern="4:2"), "0 < N < M"),
    (dict(pattern="2-4"), "N:M"), (dict(pattern="2:4", sparsity=0.7), "conflicts"),
    (dict(pattern="2:3"), "divisible"), (dict(layers=["nope"]), "not a module"),
    (dict(layers=["bert.embeddings"]), "Wanda prunes"), (dict(layers=[]), "non-empty"),
])
@pytest.mark.parametrize("inplace", [False, True])
def test_bad_input_leaves_the_model_unchanged(kwargs, match, inplace):
    model = tiny_bert()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        sparsity.wanda(model, text_batches(), inplace=inplace, progress=False, **kwargs)
    assert not sparsity.has_masks(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("inplace", [False, True])
def test_nan_activations_name_the_layer_and_leave_the_model(inplace):
    model = conv_net()
    before = _snapshot(model)
    good = torch.randn(2, 8, 4, 4)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="'0.0'.*batch 1"):
        sparsity.wanda(model, [good, bad], inplace=inplace, progress=False)
    assert not sparsity.has_masks(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_shot_iterator_is_refused_for_sequential():
    with pytest.raises(TypeError, match="re-iterable|one-shot"):
        sparsity.wanda(tiny_bert(), iter(text_batches()), progress=False)


def test_semi_structured_refuses_cpu():
    out = sparsity.wanda(tiny_bert(), text_batches(), pattern="2:4", progress=False)
    with pytest.raises(ValueError, match="CUDA"):
        sparsity.to_semi_structured(out)


def test_reachable_from_plain_import():
    assert mpruner.sparsity.wanda is sparsity.wanda


def test_trained_masked_model_deep_copies_and_saves():
    out = sparsity.wanda(tiny_bert(), text_batches(), progress=False)
    train = [{**b, "labels": torch.tensor([0, 1, 0, 1])} for b in text_batches()]
    mpruner.Finetuner(train, max_steps=1, progress=False)(out)  # leaves weight = orig * mask with autograd history
    frozen = sparsity.frozen_copy(out)
    assert sparsity.has_masks(out) and not sparsity.has_masks(frozen)
    assert sparsity.count_nonzero(frozen) == sparsity.count_nonzero(out)
    again = sparsity.wanda(out, text_batches(), pattern="2:4", progress=False)  # deep-copies the trained model
    assert sparsity.report(again).total_zeros >= sparsity.report(out).total_zeros

"""analyze(metric="cosine"|"angular") and Block Influence against hidden states taken with hooks here."""

import pytest
import torch

import mpruner
from mpruner.engine import reference

from tests.helpers.tiny_lms import FAMILIES, tiny_lm

pytest.importorskip("transformers")


def _batches(padding, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ([6, 3, 5], [4, 6, 2]):
        T = max(lengths)
        ids = torch.randint(3, 97, (len(lengths), T), generator=g)
        mask = torch.zeros(len(lengths), T, dtype=torch.long)
        for b, n in enumerate(lengths):
            if padding == "right":
                mask[b, :n] = 1
            else:
                mask[b, T - n:] = 1
        out.append({"input_ids": torch.where(mask.bool(), ids, 0), "attention_mask": mask})
    return out


def _blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def _hooked_states(model, batches):
    """Per batch: (outputs, inputs) of every block, taken with the test's own hooks."""
    blocks, records = _blocks(model), []
    cur = {"in": {}, "out": {}}

    def pre(i):
        def f(m, args, kwargs):
            cur["in"][i] = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).detach().clone()
        return f

    def post(i):
        def f(m, args, out):
            cur["out"][i] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return f

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i)) for i, b in enumerate(blocks)]
    try:
        for batch in batches:
            cur["in"], cur["out"] = {}, {}
            with torch.no_grad():
                model(**batch)
            L = len(blocks)
            records.append(([cur["out"][i] for i in range(L)], [cur["in"][i] for i in range(L)], batch["attention_mask"]))
    finally:
        for h in handles:
            h.remove()
    return records


def _expected(records, view):
    """Token-weighted means over batches, pairs and block influence, one token at a time."""
    L = len(records[0][0])
    cos = torch.zeros(L, L, dtype=torch.float64)
    ang = torch.zeros(L, L, dtype=torch.float64)
    infl = torch.zeros(L, dtype=torch.float64)
    n = 0
    for outs, ins, mask in records:
        tokens = int(mask.sum()) if view == "tokens" else mask.shape[0]
        c, a = reference.token_cosine(outs, mask, view=view)
        cos += c * tokens
        ang += a * tokens
        for l in range(L):
            ci, _ = reference.token_cosine([ins[l], outs[l]], mask, view=view)
            infl[l] += (1 - ci[0, 1]) * tokens
        n += tokens
    return cos / n, ang / n, infl / n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_cosine_angular_block_influence(family, padding):
    model = tiny_lm(family)
    batches = _batches(padding)
    exp_cos, exp_ang, exp_infl = _expected(_hooked_states(model, batches), "tokens")
    a = mpruner.analyze(model, batches, metric="cosine", progress=False)
    assert a.metric == "cosine" and a.cka is None and a.options["view"] == "tokens"
    assert a.num_samples == sum(int(b["attention_mask"].sum()) for b in batches)
    torch.testing.assert_close(a.matrix, exp_cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.block_influence(), exp_infl, rtol=1e-5, atol=1e-6)
    g = mpruner.analyze(model, batches, metric="angular", progress=False)
    torch.testing.assert_close(g.matrix, exp_ang, rtol=1e-5, atol=1e-6)
    assert exp_cos.min() < 0.99  # the blocks really differ: the comparison means something


@pytest.mark.parametrize("padding", ["left", "right"])
def test_last_token_view(padding):
    model = tiny_lm("llama")
    batches = _batches(padding, seed=1)
    exp_cos, exp_ang, exp_infl = _expected(_hooked_states(model, batches), "last_token")
    a = mpruner.analyze(model, batches, metric="angular", view="last_token", progress=False)
    torch.testing.assert_close(a.matrix, exp_ang, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.block_influence(), exp_infl, rtol=1e-5, atol=1e-6)
    assert a.num_samples == 6


def test_run_distance_and_cka_with_block_inputs_in_one_pass():
    model = tiny_lm("qwen2", layers=5)
    batches = _batches("right")
    records = _hooked_states(model, batches)
    a = mpruner.analyze(model, batches, view="mean", unbiased=False, block_inputs=True, progress=False)
    assert a.metric == "cka" and a.cka is not None and a.block_io is not None
    plain = mpruner.analyze(model, batches, view="mean", unbiased=False, progress=False)
    torch.testing.assert_close(a.cka, plain.cka)  # inputs captured beside CKA change nothing
    _, _, exp_infl = _expected(records, "tokens")
    torch.testing.assert_close(a.block_influence(), exp_infl, rtol=1e-5, atol=1e-6)
    # run_distance(n)[i]: input of block i vs output of block i+n-1, mean over real tokens
    g = mpruner.analyze(model, batches, metric="angular", progress=False)
    d = g.run_distance(2)
    assert d.shape == (4,)
    num, den = 0.0, 0
    for outs, ins, mask in records:
        _, ang = reference.token_cosine([ins[1], outs[2]], mask)
        num += float(ang[0, 1]) * int(mask.sum())
        den += int(mask.sum())
    assert float(d[1]) == pytest.approx(num / den, rel=1e-5)
    with pytest.raises(ValueError, match="block_inputs"):
        plain.block_influence()


def test_save_load_keeps_metric_and_block_io(tmp_path):
    model = tiny_lm("mistral", layers=3)
    a = mpruner.analyze(model, _batches("left"), metric="angular", progress=False)
    a.save(str(tmp_path / "a.json"))
    b = mpruner.Analysis.load(str(tmp_path / "a.json"))
    assert b.metric == "angular" and b.cka is None
    torch.testing.assert_close(b.matrix, a.matrix)
    torch.testing.assert_close(b.block_influence(), a.block_influence())


def test_bad_arguments():
    model = tiny_lm("llama", layers=2)
    with pytest.raises(ValueError, match="metric"):
        mpruner.analyze(model, _batches("left"), metric="euclid", progress=False)
    with pytest.raises(ValueError, match="view"):
        mpruner.analyze(model, _batches("left"), metric="cosine", view="mean", progress=False)
    with pytest.raises(ValueError, match="other"):
        mpruner.analyze(model, _batches("left"), metric="cosine", other=tiny_lm("llama", layers=2), progress=False)

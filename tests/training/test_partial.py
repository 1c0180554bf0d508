"""Partial healing (mpruner/training/partial.py): which parameters each train= mode trains, the
frozen ones bitwise unchanged after a Finetuner call, and K or a record that is missing."""
import pytest
import torch

import mpruner
from mpruner.training.partial import block_origins, check_train, trainable
from tests.helpers.tiny_lms import VOCAB, tiny_lm


def _batches(n=2, B=2, T=8):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (B, T), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def _names(model, chosen):
    return {k for k, p in model.named_parameters() if id(p) in chosen}


def _block_of(name):
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


def test_block_origins_follow_every_step():
    model = tiny_lm("llama", layers=6)
    assert block_origins(model) is None
    once = mpruner.remove_layers(model, [1, 2])
    assert block_origins(once) == ("model.layers", [0, 3, 4, 5], 6)
    twice = mpruner.remove_layers(once, [2])  # original block 4
    assert block_origins(twice) == ("model.layers", [0, 3, 5], 6)


def test_around_cuts_trains_the_blocks_beside_each_cut_and_every_norm():
    pruned = mpruner.remove_layers(tiny_lm("llama", layers=7), [2, 3, 6])  # kept 0, 1, 4, 5: cuts after 1, 5
    names = _names(pruned, trainable(pruned, "around-cuts", freeze_embeddings=False))
    blocks = {_block_of(n) for n in names if "layernorm" not in n} - {None}
    assert blocks == {1, 2, 3}  # kept blocks 1 | cut | 4 (index 2) ... 5 (index 3) | cut at the end
    assert {n for n in names if _block_of(n) is None} == {"model.norm.weight"}
    assert any("layers.0.input_layernorm" in n for n in names)  # norms everywhere, also in frozen blocks


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_last_k_trains_the_last_blocks_the_final_norm_and_the_head(family):
    model = tiny_lm(family, layers=4)
    names = _names(model, trainable(model, "last:2", freeze_embeddings=False))
    head = "lm_head.weight"
    final = "model.norm.weight" if family == "llama" else "transformer.ln_f.weight"
    assert head in names or any("wte" in n or "embed_tokens" in n for n in names)  # tied heads are the embedding
    assert final in names
    blocks = mpruner.find_blocks(model)[0]
    inside = {id(p) for m in blocks.modules[:2] for p in m.parameters()}
    assert not any(id(p) in inside for k, p in model.named_parameters() if k in names)
    assert all(id(p) in {id(q) for k, q in model.named_parameters() if k in names}
               for m in blocks.modules[2:] for p in m.parameters())


def test_freeze_embeddings_takes_the_tied_head_out_too():
    model = tiny_lm("llama", layers=3)
    names = _names(model, trainable(model, "all", freeze_embeddings=True))
    embed = {id(p) for p in model.get_input_embeddings().parameters()} | \
        {id(p) for p in model.get_output_embeddings().parameters()}
    assert not any(id(p) in embed for k, p in model.named_parameters() if k in names)
    assert len(names) == sum(1 for _ in model.parameters()) - len(
        {k for k, p in model.named_parameters() if id(p) in embed})


@pytest.mark.parametrize("train", ["around-cuts", "last:1"])
def test_frozen_weights_are_bitwise_unchanged_and_the_others_move(train):
    pruned = mpruner.remove_layers(tiny_lm("llama", layers=5), [2])
    chosen = _names(pruned, trainable(pruned, train, freeze_embeddings=False))
    before = {k: p.detach().clone() for k, p in pruned.named_parameters()}
    flags = {k: p.requires_grad for k, p in pruned.named_parameters()}
    mpruner.Finetuner(_batches(), lr=1e-2, progress=False, train=train)(pruned)
    for k, p in pruned.named_parameters():
        if k in chosen:
            assert not torch.equal(p, before[k]), f"{k} should have trained"
        else:
            assert torch.equal(p, before[k]), f"{k} is frozen but changed"
    assert {k: p.requires_grad for k, p in pruned.named_parameters()} == flags  # restored


def test_bad_train_values():
    for bad in ("some", "last:", "last:x", "last:0", 3, None):
        with pytest.raises(ValueError, match="train must be one of|K must be >= 1"):
            check_train(bad)
    model = tiny_lm("llama", layers=3)
    with pytest.raises(ValueError, match=r"train='last:4': the model has 3 blocks; K must be in 1\.\.3"):
        mpruner.Finetuner(_batches(), progress=False, train="last:4")(model)
    with pytest.raises(ValueError, match="carries no record of removed blocks"):
        mpruner.Finetuner(_batches(), progress=False, train="around-cuts")(model)
    with pytest.raises(ValueError, match="lora= options go with train='lora'"):
        mpruner.Finetuner([], train="all", lora=dict(r=4))

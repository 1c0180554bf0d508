"""Tiny decoder LMs with a planted redundant block, and calibration batches for them."""
import torch

from tests.helpers.tiny_lms import VOCAB, tiny_lm

IDENTITY = 2  # the planted redundant block


def batches(seed=0, n=3, batch=4, tokens=16, pad=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (batch, tokens), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            mask[0, -5:] = 0  # padding on one sequence: never read
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def planted(family, layers=5, identity=IDENTITY, seed=0):
    """A tiny LM whose block ``identity`` is exactly the identity (no attention, no MLP output)."""
    model = tiny_lm(family, layers=layers, seed=seed)
    block = model.model.layers[identity] if hasattr(model, "model") else model.transformer.h[identity]
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "c_proj.weight", "c_proj.bias")):
                p.zero_()
    return model


def sampled(model, seed=0, n=3, batch=4, tokens=16, temperature=0.3):
    """Batches sampled from the model itself at a low temperature: the full model predicts them
    best, so removing a block that does anything raises the loss, as on real text for a trained
    model (a random tiny LM's near-uniform predictions would leave that to chance)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(n):
            ids = torch.randint(3, VOCAB, (batch, 1), generator=g)
            for _ in range(tokens - 1):
                probs = (model(input_ids=ids).logits[:, -1] / temperature).softmax(-1)
                ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], dim=1)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def massive(model, token=5, dim=3, value=2e4):
    """Plants a massive activation: one token's embedding has one huge dimension, which the
    residual stream carries through every block (Sun et al. 2024)."""
    with torch.no_grad():
        model.get_input_embeddings().weight[token, dim] = value
    return model

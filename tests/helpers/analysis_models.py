"""Tiny models, token batches, the float64 minibatch-CKA reference and a small Analysis for
the analysis tests."""
import numpy as np
import torch
import torch.nn as nn

from mpruner.analysis import Analysis
from tests.helpers import np_reference as R


def example(cross=False):
    """Three layers with a NaN pair (or its cross-model variant, other: the first two layers)."""
    c = torch.tensor([[1.0, 0.9, 0.5], [0.9, 1.0, float("nan")], [0.5, float("nan"), 1.0]], dtype=torch.float64)
    names = ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    if cross:
        return Analysis(c[:, :2], names, 64, {"view": "mean", "model": "BertModel"}, other_layer_names=names[:2])
    return Analysis(c, names, 64, {"view": "mean", "model": "BertModel", "skipped_samples": 3})


def mlp(depth=5, width=12, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)])


class Residual(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class TokenNet(nn.Module):
    """Embedding + residual token blocks in ``self.layers``; no masking inside, so padding
    positions carry values the views must leave out."""

    def __init__(self, depth=4, dim=10, vocab=30, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Residual(dim) for _ in range(depth))

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h)
        return h

    @torch.no_grad()
    def hidden(self, input_ids):
        """Block outputs computed without hooks, float64."""
        out, h = [], self.embed(input_ids).double()
        for layer in self.layers:
            h = h + torch.tanh(nn.functional.linear(h, layer.fc.weight.double(), layer.fc.bias.double()))
            out.append(h)
        return out


def token_batches(gen, sizes=(6, 5, 7), T=9, vocab=30, left=False):
    batches = []
    for B in sizes:
        ids = torch.randint(1, vocab, (B, T), generator=gen)
        lengths = torch.randint(4, T + 1, (B,), generator=gen)
        lengths[0] = T
        pos = torch.arange(T)[None, :]
        mask = (pos >= T - lengths[:, None]) if left else (pos < lengths[:, None])
        ids = torch.where(mask, ids, 0)
        batches.append({"input_ids": ids, "attention_mask": mask.long()})
    return batches


def minibatch_reference(per_batch, unbiased=True):
    """per_batch: list over batches of lists over layers of (n, d) arrays."""
    L = len(per_batch[0])
    h = np.zeros((L, L))
    for feats in per_batch:
        grams = [R.gram(np.asarray(f, dtype=np.float64)) for f in feats]
        h += np.array([[R.hsic(a, b, unbiased) for b in grams] for a in grams])
    return h / np.sqrt(np.outer(np.diag(h), np.diag(h)))

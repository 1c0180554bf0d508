"""Pure-PyTorch reference implementations of every engine op.

Written for clarity, not speed: explicit centering matrices, one layer pair and one
sequence at a time. Tests compare the C++/CUDA ops against these (run in float64) and
against NumPy. Inputs follow the engine's conventions: samples are rows.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch


def _as2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def gram(x: torch.Tensor, kernel: str = "linear", sigma: Optional[float] = None) -> torch.Tensor:
    """Gram matrix of x (n, ...): linear X X^T, or RBF with sigma^2 = sigma_f^2 * median d^2.

    The median is that of the canonical CKA reference (Kornblith et al. 2019,
    ``gram_rbf``): over all n^2 squared distances, the diagonal zeros included, and
    the mean of the two middle values for an even count (``np.median``).
    The samples are feature-centred first, as the engine does: no HSIC/CKA changes, but
    the explicit HSIC_1 formula below would otherwise cancel away ~1e-8 on activations
    with a large offset.
    """
    x = _as2d(x)
    x = x - x.mean(0, keepdim=True)
    if kernel == "linear":
        return x @ x.T
    if kernel != "rbf":
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    f = 0.5 if sigma is None else sigma
    g = x @ x.T
    sq = torch.diagonal(g)
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    d2.fill_diagonal_(0)
    v = d2.flatten().sort().values
    m = v.numel()
    med = v[m // 2] if m % 2 else (v[m // 2 - 1] + v[m // 2]) / 2
    if med <= 0:
        return torch.ones_like(d2)
    return torch.exp(-d2 / (2 * f * f * med))


def center_gram(k: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """HKH with H = I - 11^T/n, or the U-centered matrix when unbiased."""
    n = k.shape[-1]
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
        return h @ k @ h
    k = k.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    r = k.sum(-1, keepdim=True)
    s = r.sum(-2, keepdim=True)
    u = k - r / (n - 2) - r.transpose(-1, -2) / (n - 2) + s / ((n - 1) * (n - 2))
    u.diagonal(dim1=-2, dim2=-1).zero_()
    return u


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Biased HSIC_0 = <HKH, HLH>/(n-1)^2, or Song et al.'s unbiased HSIC_1 (explicit formula)."""
    n = k.shape[-1]
    if not unbiased:
        h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
        return torch.trace(k @ h @ l @ h) / (n - 1) ** 2
    kt, lt = k.clone(), l.clone()
    kt.fill_diagonal_(0)
    lt.fill_diagonal_(0)
    one = torch.ones(n, dtype=k.dtype, device=k.device)
    return (torch.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def cka(x, y, kernel="linear", unbiased=False, sigma=None) -> torch.Tensor:
    k, l = gram(x, kernel, sigma), gram(y, kernel, sigma)
    return hsic(k, l, unbiased) / torch.sqrt(hsic(k, k, unbiased) * hsic(l, l, unbiased))


def hsic_matrix(features: Sequence[torch.Tensor], kernel="linear", unbiased=False, sigma=None) -> torch.Tensor:
    grams = [gram(x, kernel, sigma) for x in features]
    L = len(grams)
    out = torch.empty(L, L, dtype=grams[0].dtype)
    for a in range(L):
        for b in range(L):
            out[a, b] = hsic(grams[a], grams[b], unbiased)
    return out


def cka_from_hsic(h: torch.Tensor) -> torch.Tensor:
    d = torch.diagonal(h)
    return h / torch.sqrt(d[:, None] * d[None, :])


def cka_matrix(features, kernel="linear", unbiased=False, sigma=None, other=None) -> torch.Tensor:
    allf = list(features) + list(other or [])
    c = cka_from_hsic(hsic_matrix(allf, kernel, unbiased, sigma))
    L = len(features)
    return c if other is None else c[:L, L:]


def minibatch_cka(batches: Iterable[Sequence[torch.Tensor]], kernel="linear", unbiased=True, sigma=None):
    """Nguyen et al. 2021: sum per-batch HSIC over batches, normalise at the end."""
    total = None
    for feats in batches:
        h = hsic_matrix(feats, kernel, unbiased, sigma)
        total = h if total is None else total + h
    return cka_from_hsic(total)


def token_cka(hidden_states: Sequence[torch.Tensor], attention_mask: Optional[torch.Tensor], unbiased=False):
    """Per-sequence linear CKA, one sequence at a time: (B, L, L)."""
    B, T = hidden_states[0].shape[:2]
    mask = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
    out = []
    for b in range(B):
        feats = [h[b][mask[b].to(h.device)] for h in hidden_states]
        out.append(cka_matrix(feats, "linear", unbiased))
    return torch.stack(out)


def exact_linear_cka(xs: Sequence[torch.Tensor], unbiased=False, other=None) -> torch.Tensor:
    """Linear CKA over the whole data set (all samples in one Gram)."""
    return cka_matrix(xs, "linear", unbiased, other=other)


def token_cosine(hidden_states: Sequence[torch.Tensor], attention_mask: Optional[torch.Tensor] = None,
                 view: str = "tokens"):
    """Mean cosine and mean angular distance arccos(cos)/pi between every pair of layers.

    One pair and one token at a time, in float64; the zero-vector rule of the engine
    (two zero vectors: cosine 1; one zero vector: cosine 0); cosines clamped to [-1, 1].
    """
    import math

    layers = [h.double() for h in hidden_states]
    B, T = layers[0].shape[:2]
    mask = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
    tokens = []
    for b in range(B):
        real = [t for t in range(T) if mask[b, t]]
        if view == "last_token":
            real = real[-1:]
        tokens += [(b, t) for t in real]
    L = len(layers)
    cos = torch.zeros(L, L, dtype=torch.float64)
    ang = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(L):
            for b, t in tokens:
                u, v = layers[i][b, t], layers[j][b, t]
                nu, nv = float(u @ u), float(v @ v)
                if nu == 0 or nv == 0:
                    c = 1.0 if nu == 0 and nv == 0 else 0.0
                else:
                    c = max(-1.0, min(1.0, float(u @ v) / math.sqrt(nu * nv)))
                cos[i, j] += c
                ang[i, j] += math.acos(c) / math.pi
    return cos / len(tokens), ang / len(tokens)

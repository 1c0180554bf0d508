"""Float64 references for every estimator a benchmarked method computes.

Written independently of the engine (plain torch in float64, on the very float32 inputs
the methods see, cast up), and checked against ``mpruner.reference`` in the benchmark
tests. Per-batch HSIC matrices are kept, so the reference of any subset of batches (a
peer timed on part of the data) is exact too.

Estimators:
  minibatch-u   sum over batches of unbiased HSIC_1 (Nguyen et al. 2021), then CKA
  lastbatch-u   HSIC_1 CKA of the last batch processed only
  full-b        biased HSIC_0 CKA over all N samples at once (features centered over N)
  seq-b, seq-u  per-sequence CKA (tokens of one sequence as samples), biased / unbiased
  tok-cos       mean cosine similarity between the layers' hidden states over every real token
  tok-ang       mean angular distance arccos(cos)/pi over every real token (Gromov et al.)
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .workloads import MinibatchSource, TokenSource

ESTIMATORS = {
    "minibatch-u": "minibatch CKA, unbiased HSIC_1 summed over batches",
    "lastbatch-u": "unbiased HSIC_1 CKA of the last batch only",
    "full-b": "biased CKA over all N samples at once",
    "seq-b": "per-sequence biased CKA",
    "seq-u": "per-sequence unbiased CKA",
    "tok-cos": "mean token cosine similarity (all real tokens)",
    "tok-ang": "mean token angular distance (all real tokens)",
    "none": "no CKA (floor)",
}


def _hsic_both(xs: Sequence[torch.Tensor]):
    """(L, L) biased HSIC_0 and unbiased HSIC_1 of one sample set; xs: L tensors (n, d), float64."""
    n = xs[0].shape[0]
    grams = []
    for x in xs:
        xc = x - x.mean(0, keepdim=True)  # HSIC is invariant to it; it keeps the Grams accurate
        grams.append(xc @ xc.T)           # feature-centered Gram = H K H
    k = torch.stack(grams)                # (L, n, n)
    flat = k.reshape(len(xs), -1)
    h0 = flat @ flat.T / (n - 1) ** 2
    u = k.clone()
    u.diagonal(dim1=1, dim2=2).zero_()
    r = u.sum(2, keepdim=True)
    s = r.sum(1, keepdim=True)
    u = u - r / (n - 2) - r.transpose(1, 2) / (n - 2) + s / ((n - 1) * (n - 2))
    u.diagonal(dim1=1, dim2=2).zero_()
    uf = u.reshape(len(xs), -1)
    h1 = uf @ uf.T / (n * (n - 3)) if n >= 4 else torch.full_like(h0, float("nan"))
    return h0, h1


def cka_from_hsic(h: torch.Tensor) -> torch.Tensor:
    d = torch.diagonal(h, dim1=-2, dim2=-1)
    return h / torch.sqrt(d[..., :, None] * d[..., None, :])


def _full_batch_biased(src: MinibatchSource, max_bytes: int, max_flops: float) -> Optional[torch.Tensor]:
    """Biased CKA over all N samples, via the cheaper of N x N Grams or d x d cross
    products; None when neither fits max_bytes and max_flops."""
    wl = src.wl
    L, N, d = wl.L, wl.N, wl.d
    data_bytes = 8 * N * L * d
    options = sorted([(2.0 * L * N * N * d, 8 * L * N * N, True), (L * (L + 1) * d * d * N, 8 * d * d, False)])
    fits = [o for o in options if data_bytes + o[1] <= max_bytes and o[0] <= max_flops]
    if not fits:
        return None
    use_gram = fits[0][2]
    per_layer: List[List[torch.Tensor]] = [[] for _ in range(L)]
    for i in range(wl.num_batches):
        for l, x in enumerate(src.batch(i)):
            per_layer[l].append(x.reshape(wl.n, -1))
    xs = []
    for l in range(L):
        x = torch.cat(per_layer[l]).double()
        per_layer[l] = []
        xs.append(x - x.mean(0, keepdim=True))
    if use_gram:
        flat = torch.stack([(x @ x.T).reshape(-1) for x in xs])
        h = flat @ flat.T
    else:
        h = torch.empty(L, L, dtype=torch.float64, device=xs[0].device)
        for a in range(L):
            for b in range(a, L):
                h[a, b] = h[b, a] = torch.linalg.matrix_norm(xs[a].T @ xs[b]) ** 2
    return cka_from_hsic(h)


def compute(src, full: bool = True, max_full_bytes: int = 2 * 2**30, max_full_flops: float = 2e11
            ) -> Dict[str, torch.Tensor]:
    """Reference tensors for a workload (computed on the source's device, returned on the CPU).
    ``full``: also the all-samples biased CKA (only rows of estimator "full-b" need it)."""
    out: Dict[str, torch.Tensor] = {}
    if isinstance(src, MinibatchSource):
        wl = src.wl
        h0s, h1s = [], []
        for i in range(wl.num_batches):
            h0, h1 = _hsic_both([x.reshape(wl.n, -1).double() for x in src.batch(i)])
            h0s.append(h0)
            h1s.append(h1)
        out["mb_b"] = torch.stack(h0s).cpu()
        out["mb_u"] = torch.stack(h1s).cpu()
        full = _full_batch_biased(src, max_full_bytes, max_full_flops) if full else None
        if full is not None:
            out["full_b"] = full.cpu()
    else:
        assert isinstance(src, TokenSource)
        cb, cu = [], []
        for b in range(src.wl.B):
            x = src.sequence(b).double()
            h0, h1 = _hsic_both(list(x.unbind(0)))
            cb.append(cka_from_hsic(h0))
            cu.append(cka_from_hsic(h1))
        out["seq_b"] = torch.stack(cb).cpu()
        out["seq_u"] = torch.stack(cu).cpu()
        cos_sums, ang_sums, tokens = [], [], []
        for b in range(src.wl.B):
            c, a = _cosine_angular_sums(src.sequence(b).double())
            cos_sums.append(c)
            ang_sums.append(a)
            tokens.append(src.lengths[b])
        out["seq_cos"], out["seq_ang"] = torch.stack(cos_sums).cpu(), torch.stack(ang_sums).cpu()
        out["seq_tok"] = torch.tensor(tokens, dtype=torch.float64)
    return out


def _cosine_angular_sums(x: torch.Tensor):
    """(L, t, D) float64 -> sums over the t tokens of cos and arccos(cos)/pi for every layer pair.
    Zero vectors: two count as identical, one as orthogonal to anything (the engine's rule)."""
    norm = x.norm(dim=-1)                                        # (L, t)
    u = x / torch.where(norm > 0, norm, 1)[..., None]
    cos = torch.einsum("atd,btd->abt", u, u)
    za, zb = (norm == 0)[:, None, :], (norm == 0)[None, :, :]
    cos = torch.where(za & zb, 1.0, torch.where(za | zb, 0.0, cos)).clamp(-1, 1)
    return cos.sum(-1), (torch.arccos(cos) / torch.pi).sum(-1)


def expected(ref: Dict[str, torch.Tensor], estimator: str, *, batches: Optional[List[int]] = None,
             seq_ids: Optional[List[int]] = None) -> Optional[torch.Tensor]:
    """The float64 CKA the estimator gives on the given subset (None if not available)."""
    if estimator == "minibatch-u":
        return cka_from_hsic(ref["mb_u"][batches].sum(0))
    if estimator == "lastbatch-u":
        return cka_from_hsic(ref["mb_u"][batches[-1]])
    if estimator == "full-b":
        if batches is not None and len(batches) != ref["mb_u"].shape[0]:
            return None
        return ref.get("full_b")
    if estimator in ("seq-b", "seq-u"):
        return ref["seq_" + estimator[-1]][seq_ids]
    if estimator in ("tok-cos", "tok-ang"):
        return ref["seq_" + estimator[4:]][seq_ids].sum(0) / ref["seq_tok"][seq_ids].sum()
    return None

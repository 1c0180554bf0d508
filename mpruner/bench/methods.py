"""mpruner, the plain-PyTorch baselines and the Gram floor, as benchmark methods."""
from __future__ import annotations

from typing import Dict, List

import torch

from .core import Ctx, Method, Result

MINIBATCH = ("minibatch",)
TOKENS = ("tokens",)


# ---------------------------------------------------------------- mpruner
def mpruner_minibatch(ctx: Ctx, batches: List[int]) -> Result:
    import mpruner

    acc = mpruner.CKAAccumulator()  # linear kernel, unbiased HSIC_1, minibatch estimator
    for i in batches:
        acc.update(ctx.source.batch(i))
    return Result(acc.compute())


def mpruner_minibatch_at(precision: str):
    """The default accumulator with GEMMs at ``precision``; the row says which mode ran."""
    def run(ctx: Ctx, batches: List[int]) -> Result:
        import mpruner
        from mpruner.engine.precision import resolve

        acc = mpruner.CKAAccumulator(precision=precision)
        for i in batches:
            acc.update(ctx.source.batch(i))
        ran = resolve(precision, ctx.source.batch(batches[0])[0].device) if batches else precision
        note = "" if ran == precision else f"ran at precision='{ran}': this hardware lacks {precision!r}"
        return Result(acc.compute(), note=note)
    return run


def mpruner_full_batch(ctx: Ctx, batches: List[int]) -> Result:
    """Biased CKA over all samples at once, mpruner's cheaper way for the shapes: one
    cka_matrix over all N samples (L N^2 d flops, holds the N samples), or the streaming
    exact estimator (N (L d)^2 flops, (L d)^2 float64 memory)."""
    import mpruner

    wl = ctx.wl
    N = wl.n * len(batches)
    gram_cost, exact_cost = wl.L * N * N * wl.d, N * (wl.L * wl.d) ** 2
    if gram_cost <= exact_cost and 4 * N * wl.L * wl.d <= 4 * 2**30:
        per_layer = [[] for _ in range(wl.L)]
        for i in batches:
            for l, x in enumerate(ctx.source.batch(i)):
                per_layer[l].append(x)
        feats = [torch.cat(p) for p in per_layer]  # holding all N samples is this estimator's cost
        del per_layer
        return Result(mpruner.cka_matrix(feats, unbiased=False), note="cka_matrix over all N samples at once")
    acc = mpruner.CKAAccumulator(estimator="exact", unbiased=False)
    for i in batches:
        acc.update(ctx.source.batch(i))
    return Result(acc.compute(), note="CKAAccumulator(estimator='exact', unbiased=False), streaming")


def mpruner_tokens(unbiased: bool):
    def run(ctx: Ctx, batches: List[int]) -> Result:
        import mpruner

        outs = []
        for j in batches:
            layers, mask = ctx.source.batch(j)
            outs.append(mpruner.token_cka(layers, attention_mask=mask, unbiased=unbiased))
        return Result(torch.cat(outs), seq_ids=ctx.seq_ids(batches))
    return run


def mpruner_token_metric(which: str):
    """Mean cosine ("cos") or angular distance ("ang") over every real token: the fused
    kernel once per forward pass (all pairs at once, float64 sums), summed over passes."""
    def run(ctx: Ctx, batches: List[int]) -> Result:
        from mpruner.engine.similarity import cosine_sums, token_rows

        total, count = None, 0
        for j in batches:
            layers, mask = ctx.source.batch(j)
            rows = token_rows(mask, *mask.shape, device=layers[0].device)
            cos, ang = cosine_sums(layers, rows)
            part = cos if which == "cos" else ang
            total = part if total is None else total + part
            count += rows.numel()
        return Result(total / count, seq_ids=ctx.seq_ids(batches))
    return run


# ---------------------------------------------------------------- plain PyTorch
def _u_center(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[-1]
    k = k.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    r = k.sum(-1, keepdim=True)
    s = r.sum(-2, keepdim=True)
    u = k - r / (n - 2) - r.transpose(-1, -2) / (n - 2) + s / ((n - 1) * (n - 2))
    u.diagonal(dim1=-2, dim2=-1).zero_()
    return u


def torch_minibatch(ctx: Ctx, batches: List[int]) -> Result:
    """Minibatch unbiased CKA with torch ops only, written as a careful user would:
    features centered (float32 Grams of offset features lose digits), Grams stacked,
    U-centered, one (L, n^2) x (n^2, L) GEMM for all pairs, float64 sums."""
    total = None
    for i in batches:
        xs = [x.reshape(x.shape[0], -1) for x in ctx.source.batch(i)]
        n = xs[0].shape[0]
        xs = [x - x.mean(0) for x in xs]
        k = torch.stack([x @ x.T for x in xs])
        u = _u_center(k).reshape(len(xs), -1)
        h = (u @ u.T).double() / (n * (n - 3))
        total = h if total is None else total + h
    d = torch.diagonal(total)
    return Result(total / torch.sqrt(d[:, None] * d[None, :]))


def torch_tokens(ctx: Ctx, batches: List[int]) -> Result:
    """Per-sequence biased CKA, vectorised over sequences with torch ops only: mask padding,
    center each sequence's features over its real tokens, one padded batched GEMM for the
    Grams, one batched GEMM for every pair."""
    outs = []
    for j in batches:
        layers, mask = ctx.source.batch(j)
        x = torch.stack(layers)                                     # (L, B, T, D)
        valid = mask.bool()[None, :, :, None]
        x = torch.where(valid, x, 0)
        x = x - x.sum(2, keepdim=True) / mask.sum(1)[None, :, None, None]
        x = torch.where(valid, x, 0)
        g = x @ x.transpose(-1, -2)                                 # (L, B, T, T), centered
        L, B = g.shape[:2]
        flat = g.permute(1, 0, 2, 3).reshape(B, L, -1)
        h = torch.bmm(flat, flat.transpose(1, 2)).double()          # (B, L, L); (n-1)^2 cancels
        d = torch.diagonal(h, dim1=1, dim2=2)
        outs.append(h / torch.sqrt(d[:, :, None] * d[:, None, :]))
    return Result(torch.cat(outs), seq_ids=ctx.seq_ids(batches))


def _from_cosines(cos: torch.Tensor, which: str) -> torch.Tensor:
    """Cosines (clamped to [-1, 1]) as the metric: themselves, or the angular distance arccos/pi."""
    return cos if which == "cos" else torch.arccos(cos) / torch.pi


def torch_token_metric(which: str):
    """The same metric with torch ops, vectorised as a careful user would: the real tokens
    gathered once per layer, unit vectors, then per layer its token-wise dots with every
    layer in one broadcast product, float64 sums."""
    def run(ctx: Ctx, batches: List[int]) -> Result:
        total, count = None, 0
        for j in batches:
            layers, mask = ctx.source.batch(j)
            keep = mask.bool().flatten()
            u = torch.stack([h.flatten(0, 1)[keep] for h in layers])          # (L, tokens, D)
            norm = u.norm(dim=-1, keepdim=True)
            u = u / norm.clamp_min(torch.finfo(u.dtype).tiny)
            sums = torch.empty(len(layers), len(layers), dtype=torch.float64, device=u.device)
            for a in range(len(layers)):
                cos = (u[a:a + 1] * u).sum(-1).clamp(-1, 1)                    # (L, tokens)
                sums[a] = _from_cosines(cos, which).double().sum(-1)
            total = sums if total is None else total + sums
            count += int(keep.sum())
        return Result(total / count, seq_ids=ctx.seq_ids(batches))
    return run


def pair_loop_token_metric(which: str):
    """What one-off LLM pruning scripts do: a Python loop over layer pairs, each pair's
    ``F.cosine_similarity`` over the masked tokens, ``.item()`` per pair."""
    def run(ctx: Ctx, batches: List[int]) -> Result:
        import torch.nn.functional as F

        L = ctx.wl.L
        total, count = torch.zeros(L, L, dtype=torch.float64), 0
        for j in batches:
            layers, mask = ctx.source.batch(j)
            keep = mask.bool()
            real = [h[keep] for h in layers]
            for a in range(L):
                for b in range(L):
                    cos = F.cosine_similarity(real[a], real[b], dim=-1).clamp(-1, 1)
                    total[a, b] += _from_cosines(cos, which).double().sum().item()
            count += int(keep.sum())
        return Result(total / count, seq_ids=ctx.seq_ids(batches))
    return run


def _centering(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    h = torch.eye(n, device=k.device) - torch.ones(n, n, device=k.device) / n
    return h @ k @ h


def _loop_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    kx, ky = _centering(x @ x.T), _centering(y @ y.T)
    return (torch.trace(kx @ ky) / torch.sqrt(torch.trace(kx @ kx) * torch.trace(ky @ ky))).item()


def per_sequence_loop(ctx: Ctx, seqs: List[int]) -> Result:
    """MPruner's published transformer code: one sentence at a time, every layer pair
    (L^2, both orders), Grams rebuilt per pair, explicit centering matrix H, .item()."""
    L = ctx.wl.L
    out = torch.empty(len(seqs), L, L, dtype=torch.float64)
    for s, b in enumerate(seqs):
        acts = list(ctx.source.sequence(b).unbind(0))
        for i in range(L):
            for j in range(L):
                out[s, i, j] = _loop_cka(acts[i], acts[j])
    return Result(out, seq_ids=list(seqs))


# ---------------------------------------------------------------- the floor
def gram_floor(ctx: Ctx, batches: List[int]) -> Result:
    """Only the Gram GEMMs X X^T, float32, one per layer per batch (per sequence, at its
    real length, for tokens): no centering, no HSIC. What no exact method can beat."""
    if ctx.wl.kind == "minibatch":
        for i in batches:
            for x in ctx.source.batch(i):
                x = x.reshape(x.shape[0], -1)
                torch.mm(x, x.T)
    else:
        for j in batches:
            layers, mask = ctx.source.batch(j)
            lens = mask.sum(1).tolist()
            for b, t in enumerate(lens):
                for h in layers:
                    x = h[b, :t]
                    torch.mm(x, x.T)
    return Result(None)


OWN_METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("mpruner", "mpruner", "minibatch-u", "batches", MINIBATCH, mpruner_minibatch,
           "CKAAccumulator() defaults: linear, unbiased HSIC_1, minibatch"),
    Method("mpruner high", "mpruner", "minibatch-u", "batches", MINIBATCH, mpruner_minibatch_at("high"),
           "CKAAccumulator(precision='high'): TF32 on CUDA, two bfloat16 terms on a CPU's matrix engine",
           precision="high"),
    Method("mpruner medium", "mpruner", "minibatch-u", "batches", MINIBATCH, mpruner_minibatch_at("medium"),
           "CKAAccumulator(precision='medium'): bfloat16 GEMM inputs, float32 sums", precision="medium"),
    Method("mpruner full-batch", "mpruner", "full-b", "batches", MINIBATCH, mpruner_full_batch,
           "biased CKA over all N samples: cka_matrix on all samples, or the streaming exact estimator"),
    Method("mpruner token_cka", "mpruner", "seq-b", "batches", TOKENS, mpruner_tokens(False),
           "token_cka(hidden_states, attention_mask) per forward pass of 32 sequences"),
    Method("mpruner token_cka unbiased", "mpruner", "seq-u", "batches", TOKENS, mpruner_tokens(True),
           "token_cka(..., unbiased=True)"),
    Method("torch baseline", "baseline", "minibatch-u", "batches", MINIBATCH, torch_minibatch,
           "plain PyTorch: centered Grams, U-centering, one all-pairs GEMM, float64 sums"),
    Method("torch batched", "baseline", "seq-b", "batches", TOKENS, torch_tokens,
           "plain PyTorch, vectorised over sequences (padded bmm, masked centering)"),
    Method("per-sequence loop", "baseline", "seq-b", "sequences", TOKENS, per_sequence_loop,
           "MPruner's published code: per sentence, per layer pair, explicit H, .item()"),
    Method("mpruner cosine", "mpruner", "tok-cos", "batches", TOKENS, mpruner_token_metric("cos"),
           "the fused _cosine_sums kernel per forward pass: all pairs, float64 sums (analyze(metric='cosine'))"),
    Method("mpruner angular", "mpruner", "tok-ang", "batches", TOKENS, mpruner_token_metric("ang"),
           "the same kernel's arccos(cos)/pi sums (analyze(metric='angular'))"),
    Method("torch cosine", "baseline", "tok-cos", "batches", TOKENS, torch_token_metric("cos"),
           "plain PyTorch, vectorised: real tokens gathered, unit vectors, all pairs per layer, float64 sums"),
    Method("torch angular", "baseline", "tok-ang", "batches", TOKENS, torch_token_metric("ang"),
           "plain PyTorch, vectorised, arccos(cos)/pi"),
    Method("pair-loop cosine", "baseline", "tok-cos", "batches", TOKENS, pair_loop_token_metric("cos"),
           "a loop over layer pairs with F.cosine_similarity and .item(), as one-off LLM pruning scripts do"),
    Method("gram floor", "floor", "none", "batches", MINIBATCH + TOKENS, gram_floor,
           "bare X X^T GEMMs only (float32)"),
]}

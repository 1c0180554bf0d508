"""Benchmark workloads and their deterministic, structured activations.

Activations follow a residual stream: layer l = layer l-1 + a fresh rank-r component,
plus a fixed offset (conv layers also pass a ReLU). Neighbouring layers are therefore
similar and distant ones less so (linear CKA ~ sqrt((a+1)/(b+1))), never all 0 or all
1, and the features are not centered, as real activations are not.

Every batch (every sequence, for tokens) is generated from its own seed, one at a time,
so nothing of size N x L x d is ever held, and any method, the float64 reference and any
subset see bit-identical inputs. Latents are drawn on the CPU and the projection runs on
the target device, so CPU and GPU runs see the same data up to GEMM rounding.
Generation time is counted in ``Source.gen_time`` and subtracted from every timing.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

RANK = 64  # latent rank of each layer's fresh component


@dataclass(frozen=True)
class Workload:
    """One benchmark case. ``kind`` is "minibatch" (N samples in batches of n) or
    "tokens" (B sequences of random length, per-sequence CKA)."""

    name: str
    kind: str
    L: int
    N: int = 0                 # minibatch: samples in all
    n: int = 0                 # minibatch: samples per batch
    shape: Tuple[int, ...] = ()  # minibatch: per-sample feature shape (d = prod)
    B: int = 0                 # tokens: sequences
    min_len: int = 0
    max_len: int = 0
    D: int = 0                 # tokens: hidden width
    seq_batch: int = 32        # tokens: sequences per forward pass
    seed: int = 0

    @property
    def d(self) -> int:
        return math.prod(self.shape) if self.kind == "minibatch" else self.D

    @property
    def num_batches(self) -> int:
        if self.kind == "minibatch":
            return self.N // self.n
        return -(-self.B // self.seq_batch)

    def describe(self) -> str:
        if self.kind == "minibatch":
            shp = "x".join(map(str, self.shape))
            return f"L={self.L}, N={self.N}, n={self.n}, d={self.d} ({shp})" + \
                (f", {self.num_batches} batches" if self.num_batches > 1 else "")
        return (f"B={self.B} sequences, lengths {self.min_len}-{self.max_len}, L={self.L}, D={self.D}, "
                f"{self.seq_batch} sequences per forward pass")

    def with_(self, **kw) -> "Workload":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> Dict:
        d = dataclasses.asdict(self)
        d["d"] = self.d
        d["num_batches"] = self.num_batches
        d["description"] = self.describe()
        return d


WORKLOADS: Dict[str, Workload] = {
    "dense": Workload("dense", "minibatch", L=12, N=2048, n=256, shape=(768,)),
    "conv": Workload("conv", "minibatch", L=12, N=512, n=256, shape=(64, 16, 16)),
    "tokens": Workload("tokens", "tokens", L=13, B=256, min_len=16, max_len=128, D=768),
    "gpu": Workload("gpu", "minibatch", L=24, N=16384, n=1024, shape=(1024,)),
    # small cases for pytest-benchmark and smoke runs
    "dense-small": Workload("dense-small", "minibatch", L=6, N=512, n=128, shape=(256,)),
    "tokens-small": Workload("tokens-small", "tokens", L=5, B=16, min_len=8, max_len=32, D=64, seq_batch=8),
}

HEADLINE = {"cpu": ["dense", "conv", "tokens"], "cuda": ["dense", "conv", "tokens", "gpu"]}

# Scaling sweeps: one parameter of a base workload varied at a time.
SWEEPS = {
    "cpu": {"base": "dense", "N": [512, 1024, 2048, 4096, 8192, 16384], "L": [3, 6, 12, 24, 48],
            "d": [128, 256, 768, 2048, 4096]},
    "cuda": {"base": "gpu", "N": [4096, 8192, 16384, 32768, 65536], "L": [6, 12, 24, 48, 96],
             "d": [256, 512, 1024, 2048, 4096]},
}


def sweep_workloads(device_type: str, axis: str) -> List[Workload]:
    spec = SWEEPS[device_type]
    base = WORKLOADS[spec["base"]]
    out = []
    for v in spec[axis]:
        if axis == "N":
            w = base.with_(N=v)
        elif axis == "L":
            w = base.with_(L=v)
        else:
            w = base.with_(shape=(v,))
        out.append(w.with_(name=f"sweep-{axis}-{v}"))
    return out


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _projections(L: int, d: int, seed: int, device) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 7919 + 17)
    return [(torch.randn(RANK, d, generator=g) / math.sqrt(RANK)).to(device) for _ in range(L)]


class Source:
    """Base: generation-time bookkeeping."""

    def __init__(self, wl: Workload, device):
        self.wl = wl
        self.device = torch.device(device)
        self.gen_time = 0.0

    def _timed(self, fn):
        _sync(self.device)
        t = time.perf_counter()
        out = fn()
        _sync(self.device)
        self.gen_time += time.perf_counter() - t
        return out


class MinibatchSource(Source):
    """Batch i of a minibatch workload: a list of L tensors (n, *shape), float32."""

    def __init__(self, wl: Workload, device, cache: bool = False):
        super().__init__(wl, device)
        d = wl.d
        self.proj = _projections(wl.L, d, wl.seed, self.device)
        g = torch.Generator().manual_seed(wl.seed * 7919 + 23)
        self.offset = (1.0 + torch.rand(d, generator=g)).to(self.device)  # feature means in [1, 2)
        self.relu = len(wl.shape) > 1                                      # conv maps are post-ReLU
        self.cache = cache
        self._last: Optional[Tuple[int, List[torch.Tensor]]] = None

    def _make(self, i: int) -> List[torch.Tensor]:
        wl = self.wl
        g = torch.Generator().manual_seed((wl.seed + 1) * 1_000_003 + i)
        z = torch.randn(wl.L, wl.n, RANK, generator=g).to(self.device)
        h = None
        out = []
        for l in range(wl.L):
            step = z[l] @ self.proj[l]
            h = step if h is None else h + step
            x = h + self.offset
            if self.relu:
                x = torch.relu(x)
            out.append(x.reshape(wl.n, *wl.shape))
        return out

    def batch(self, i: int) -> List[torch.Tensor]:
        if self.cache and self._last is not None and self._last[0] == i:
            return self._last[1]
        out = self._timed(lambda: self._make(i))
        if self.cache:
            self._last = (i, out)
        return out


class TokenSource(Source):
    """Sequences of random length; batch j = ``seq_batch`` sequences padded to the longest
    (padding holds more generated tokens, which every method must ignore)."""

    def __init__(self, wl: Workload, device):
        super().__init__(wl, device)
        g = torch.Generator().manual_seed(wl.seed * 7919 + 29)
        self.lengths: List[int] = torch.randint(wl.min_len, wl.max_len + 1, (wl.B,), generator=g).tolist()
        self.batches: List[List[int]] = [list(range(s, min(s + wl.seq_batch, wl.B)))
                                         for s in range(0, wl.B, wl.seq_batch)]
        self.proj = _projections(wl.L, wl.D, wl.seed, self.device)
        self.topic = (torch.randn(RANK, wl.D, generator=g) / math.sqrt(RANK)).to(self.device)

    def _make_sequence(self, b: int) -> torch.Tensor:
        """(L, max_len, D): sequence b's tokens. Always max_len of them, so that every GEMM has
        the same shape and any prefix is bit-identical whoever asks for it."""
        wl = self.wl
        g = torch.Generator().manual_seed((wl.seed + 1) * 1_000_003 + b)
        z = torch.randn(wl.L, wl.max_len, RANK, generator=g).to(self.device)
        t = torch.randn(1, RANK, generator=g).to(self.device)
        h = (t @ self.topic).expand(wl.max_len, wl.D)  # a per-sequence offset shared by its tokens
        out = torch.empty(wl.L, wl.max_len, wl.D, device=self.device)
        for l in range(wl.L):
            h = h + z[l] @ self.proj[l]
            out[l] = h
        return out

    def sequence(self, b: int) -> torch.Tensor:
        """(L, len_b, D), the real tokens of sequence b."""
        n = self.lengths[b]
        return self._timed(lambda: self._make_sequence(b)[:, :n])

    def batch(self, j: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(L tensors (Bb, T, D), attention mask (Bb, T)) for the j-th group of sequences."""
        ids = self.batches[j]

        def make():
            T = max(self.lengths[b] for b in ids)
            h = torch.stack([self._make_sequence(b)[:, :T] for b in ids], 1)  # (L, Bb, T, D)
            lens = torch.tensor([self.lengths[b] for b in ids], device=self.device)
            mask = (torch.arange(T, device=self.device)[None, :] < lens[:, None]).long()
            return list(h.unbind(0)), mask

        return self._timed(make)


def make_source(wl: Workload, device, cache: bool = False):
    return MinibatchSource(wl, device, cache) if wl.kind == "minibatch" else TokenSource(wl, device)


def essential_work(wl: Workload, source: Optional[TokenSource] = None) -> Dict[str, float]:
    """Work any exact method must do: the Gram GEMMs, the all-pairs HSIC over the upper
    triangle, and reading every activation once (float32)."""
    L = wl.L
    if wl.kind == "minibatch":
        K, n, d = wl.num_batches, wl.n, wl.d
        gram = K * L * 2.0 * n * n * d
        hsic = K * L * (L + 1) / 2 * 2.0 * n * n
        nbytes = K * L * n * d * 4.0
    else:
        lens = source.lengths if source is not None else [(wl.min_len + wl.max_len) // 2] * wl.B
        gram = sum(L * 2.0 * t * t * wl.D for t in lens)
        hsic = sum(L * (L + 1) / 2 * 2.0 * t * t for t in lens)
        nbytes = sum(L * t * wl.D * 4.0 for t in lens)
    return {"gram_flops": gram, "hsic_flops": hsic, "flops": gram + hsic, "bytes": nbytes}

"""The other CKA libraries, each called through its own documented entry point.

Most capture activations with forward hooks on a model fed by a DataLoader. They get
``ReplayModel``: a module whose ``forward(indices)`` emits the benchmark's stored
activations of that batch through L identity "tap" submodules (``layers.0`` ...), so
every library hooks the very tensors mpruner sees. Each peer gets the configuration that
is fastest for it among the documented ones (noted in its row).

Install (never replaces torch): ``pip install --no-deps -r benchmarks/requirements-peers.txt``,
or ``mpruner bench --peers all``, which installs the missing ones the same way.
"""
from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .core import Ctx, Method, Result
from .methods import MINIBATCH, TOKENS


@dataclass(frozen=True)
class PeerSpec:
    dist: str
    version: str
    module: str                      # what the adapter imports
    extras: tuple = ()               # the small packages it really imports (installed --no-deps too)
    url: str = ""


PEERS: Dict[str, PeerSpec] = {p.dist: p for p in [
    PeerSpec("torch-cka", "0.21", "torch_cka", (), "https://github.com/AntixK/PyTorch-Model-Compare"),
    PeerSpec("cka-pytorch", "1.1.3", "cka_pytorch",
             ("lightning==2.6.6", "lightning-utilities==0.15.3", "torchmetrics==1.9.0", "seaborn==0.13.2",
              "pandas==3.1.1"), "https://github.com/datthinh1801/CKA.pytorch"),
    PeerSpec("pytorch-cka", "1.1.3", "cka", (), "https://github.com/ryusudol/Centered-Kernel-Alignment"),
    PeerSpec("ckatorch", "1.0.3", "ckatorch", ("seaborn==0.13.2", "pandas==3.1.1"),
             "https://github.com/RistoAle97/centered-kernel-alignment"),
    PeerSpec("cka-analyzer", "0.1.2", "cka_analyzer.compute", ()),
]}


# ---------------------------------------------------------------- install
def installed_version(dist: str) -> Optional[str]:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def missing_requirements(names: List[str]) -> List[str]:
    """pip requirement strings (peers and their extras) not installed at the pinned version."""
    out: List[str] = []
    for name in names:
        spec = PEERS[name]
        for req in (f"{spec.dist}=={spec.version}",) + spec.extras:
            dist, ver = req.split("==")
            if installed_version(dist) is None and req not in out:
                out.append(req)
            elif dist == spec.dist and installed_version(dist) != ver and req not in out:
                out.append(req)
    return out


def install(names: List[str]) -> List[str]:
    """Installs what is missing with --no-deps (torch is never touched); returns the command."""
    reqs = missing_requirements(names)
    if not reqs:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *reqs]
    print("installing peers (--no-deps, torch untouched):", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return cmd


# ---------------------------------------------------------------- replay
class Tap(nn.Module):
    """Identity layer whose output a library hooks; ``view`` reshapes it where a library
    only accepts a particular output rank."""

    def __init__(self, view: Optional[Callable] = None):
        super().__init__()
        self.view = view

    def forward(self, x):
        return x if self.view is None else self.view(x)


class ReplayModel(nn.Module):
    """forward(indices of one batch) -> the stored activations of that batch, layer by layer."""

    def __init__(self, source, view: Optional[Callable] = None):
        super().__init__()
        self.source = source
        self.layers = nn.ModuleList(Tap(view) for _ in range(source.wl.L))

    def forward(self, x, y=None):
        acts = self.source.batch(int(x[0]) // self.source.wl.n)
        out = None
        for tap, a in zip(self.layers, acts):
            out = tap(a)
        return out


class ReplayLM(nn.Module):
    """The same, laid out as ``model.layers.{i}`` (what cka-analyzer looks up)."""

    def __init__(self, source, view=None):
        super().__init__()
        self.model = ReplayModel(source, view)

    def forward(self, input_ids):
        return self.model(input_ids)


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, idx):
        self.idx = idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, k):
        return {"input_ids": self.idx[k]}


def loader(ctx: Ctx, batches: List[int], dicts: bool = False):
    """DataLoader of sample indices; batch k yields the n indices of batch batches[k]."""
    n = ctx.wl.n
    idx = torch.cat([torch.arange(i * n, (i + 1) * n) for i in batches])
    ds = _DictDataset(idx) if dicts else torch.utils.data.TensorDataset(idx, torch.zeros(len(idx)))
    return torch.utils.data.DataLoader(ds, batch_size=n, shuffle=False)


# ---------------------------------------------------------------- minibatch entry points
def torch_cka(ctx: Ctx, batches: List[int]) -> Result:
    from torch_cka import CKA

    m1, m2 = ReplayModel(ctx.source), ReplayModel(ctx.source)
    cka = CKA(m1, m2, model1_name="replay_a", model2_name="replay_b", model1_layers=ctx.layer_names,
              model2_layers=ctx.layer_names, device=str(ctx.device))
    cka.compare(loader(ctx, batches))
    return Result(cka.export()["CKA"].double())


def cka_pytorch(ctx: Ctx, batches: List[int]) -> Result:
    from cka_pytorch.cka import CKACalculator

    m1, m2 = ReplayModel(ctx.source), ReplayModel(ctx.source)
    calc = CKACalculator(model1=m1, model2=m2, model1_layers=ctx.layer_names, device=ctx.device, verbose=False)
    return Result(calc.calculate_cka_matrix(loader(ctx, batches), num_epochs=1).double())


def pytorch_cka(ctx: Ctx, batches: List[int]) -> Result:
    from cka import compute_cka

    m = ReplayModel(ctx.source)
    out = compute_cka(m, m, loader(ctx, batches), layers=ctx.layer_names, device=ctx.device, progress=False)
    return Result(out[0].double())


def ckatorch(ctx: Ctx, batches: List[int]) -> Result:
    from ckatorch import CKA

    # ckatorch's CKA.__call__ takes (bsz, n, features) outputs: one set of n samples here.
    m = ReplayModel(ctx.source, view=lambda a: a.reshape(1, a.shape[0], -1))
    cka = CKA(m, m, layers=ctx.layer_names, device=ctx.device)
    return Result(cka(loader(ctx, batches), epochs=1).double())


def cka_analyzer(ctx: Ctx, pair_ids: List[int]) -> Result:
    import time

    from cka_analyzer.compute import extract_activations, linear_cka

    L, K = ctx.wl.L, ctx.wl.num_batches
    model = ReplayLM(ctx.source, view=lambda a: a.reshape(a.shape[0], 1, -1))  # it reads out[:, 0, :]
    t, g = time.perf_counter(), ctx.source.gen_time
    acts = extract_activations(model, list(range(L)), loader(ctx, list(range(K)), dicts=True), K)
    fixed = time.perf_counter() - t - (ctx.source.gen_time - g)
    out = torch.full((L, L), float("nan"), dtype=torch.float64)
    pairs = [ctx.pairs[p] for p in pair_ids]
    for i, j in pairs:
        out[i, j] = out[j, i] = linear_cka(acts[i], acts[j])
    return Result(out, pairs=pairs, fixed_s=fixed)


# ---------------------------------------------------------------- per-sequence entry points
def pytorch_cka_tokens(ctx: Ctx, seqs: List[int]) -> Result:
    from cka import cka_from_features

    outs = []
    for b in seqs:
        feats = list(ctx.source.sequence(b).unbind(0))
        outs.append(cka_from_features(feats, feats).double())
    return Result(torch.stack(outs).cpu(), seq_ids=list(seqs))


def ckatorch_tokens(ctx: Ctx, seqs: List[int]) -> Result:
    from ckatorch import cka_base

    L = ctx.wl.L
    out = torch.empty(len(seqs), L, L, dtype=torch.float64)
    for s, b in enumerate(seqs):
        acts = list(ctx.source.sequence(b).unbind(0))
        for i, j in ctx.pairs:
            out[s, i, j] = out[s, j, i] = cka_base(acts[i], acts[j]).item()
    return Result(out, seq_ids=list(seqs))


def cka_analyzer_tokens(ctx: Ctx, seqs: List[int]) -> Result:
    from cka_analyzer.compute import linear_cka

    L = ctx.wl.L
    out = torch.empty(len(seqs), L, L, dtype=torch.float64)
    for s, b in enumerate(seqs):
        acts = [a.cpu().numpy() for a in ctx.source.sequence(b).unbind(0)]
        for i, j in ctx.pairs:
            out[s, i, j] = out[s, j, i] = linear_cka(acts[i], acts[j])
    return Result(out, seq_ids=list(seqs))


PEER_METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("torch-cka", "peer", "minibatch-u", "batches", MINIBATCH, torch_cka,
           "CKA(m1, m2, layers).compare(loader); float32; rebuilds a Gram for every pair", peer="torch-cka"),
    Method("cka-pytorch", "peer", "minibatch-u", "batches", MINIBATCH, cka_pytorch,
           "CKACalculator(...).calculate_cka_matrix(loader, num_epochs=1) (default 10 epochs: same "
           "matrix, 10x the time); float32; +1e-4 in the denominator", peer="cka-pytorch"),
    Method("pytorch-cka", "peer", "minibatch-u", "batches", MINIBATCH, pytorch_cka,
           "compute_cka(m, m, loader, layers) (same-model path: one forward); float32; clamped to [0, 1]",
           peer="pytorch-cka"),
    Method("ckatorch", "peer", "lastbatch-u", "batches", MINIBATCH, ckatorch,
           "CKA(m, m, layers)(loader, epochs=1); layers emit (1, n, d); float64; cka_epoch[i, j] = "
           "cka_batch(x, y) overwrites per batch, so only the last batch counts", peer="ckatorch"),
    Method("cka-analyzer", "peer", "full-b", "pairs", MINIBATCH, cka_analyzer,
           "extract_activations (one pass over the data per layer) + linear_cka per pair i <= j "
           "(its compute_cka_similarity only pairs layer l with layer l); NumPy float64 on the CPU",
           peer="cka-analyzer", cpu_only=True),
    Method("pytorch-cka per sequence", "peer", "seq-u", "sequences", TOKENS, pytorch_cka_tokens,
           "cka_from_features(layers, layers) once per sequence (unbiased only); clamped to [0, 1]",
           peer="pytorch-cka"),
    Method("ckatorch per sequence", "peer", "seq-b", "sequences", TOKENS, ckatorch_tokens,
           "cka_base(x, y) per sequence per pair i <= j; float64", peer="ckatorch"),
    Method("cka-analyzer per sequence", "peer", "seq-b", "sequences", TOKENS, cka_analyzer_tokens,
           "linear_cka(x, y) per sequence per pair i <= j; NumPy float64 on the CPU", peer="cka-analyzer",
           cpu_only=True),
]}

# Peers with no entry point for a workload kind, and why (reported as rows, not hidden).
NOT_APPLICABLE = {
    ("torch-cka", "tokens"): "no per-sequence mode: CKA.compare only accumulates minibatch HSIC over batches",
    ("cka-pytorch", "tokens"): "no per-sequence mode: calculate_cka_matrix only accumulates over batches",
}

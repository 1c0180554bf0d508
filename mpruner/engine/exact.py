"""Feature-space sums for exact full-data linear CKA (``CKAAccumulator(estimator="exact")``).

With linear kernels every term of HSIC over all N samples is a function of streaming
sums: Z^T Z over the concatenated features Z = [X_1 ... X_L] (N x D), the column sums,
Z^T q and q^T q where q_i,l = ||x_l,i||^2. The biased estimator needs the first two, the
unbiased HSIC_1 all four:
    tr(K~L~)   = ||X^T Y||_F^2 - sum_i ||x_i||^2 ||y_i||^2
    1^T K~ 1   = ||sum_i x_i||^2 - sum_i ||x_i||^2
    1^T K~L~ 1 = Sx^T (X^T Y) Sy - Sx . sum_i x_i ||y_i||^2 - Sy . sum_i y_i ||x_i||^2 + sum_i ||x_i||^2 ||y_i||^2
Samples are shifted by the first batch's mean (HSIC is translation invariant) so the
float64 sums do not cancel catastrophically; ``rebase`` moves sums to another shift,
which merging and all-reduce need.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .cka import DEGENERATE_FACTOR, NonFiniteError


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB"


class ExactLinearSums:
    def __init__(self, dims: List[int], device, max_bytes: int):
        self.dims = [int(d) for d in dims]
        D, L = sum(self.dims), len(self.dims)
        need = 8 * (D * D + D * L + L * L + 2 * D)
        if need > max_bytes:
            widths = ", ".join(str(d) for d in self.dims)
            raise ValueError(f"estimator='exact' would need {_gib(need)} for the feature-space cross products of "
                             f"layers of widths [{widths}] (sum d = {D}); that exceeds max_exact_bytes="
                             f"{_gib(max_bytes)}. Use estimator='minibatch', pool the features to fewer "
                             "dimensions, or raise max_exact_bytes")
        opts = dict(dtype=torch.float64, device=device)
        # seg[l, k] = 1 when column k of Z belongs to layer l: block sums are seg @ A @ seg^T.
        self.seg = torch.repeat_interleave(torch.eye(L, **opts), torch.tensor(self.dims, device=device), dim=1)
        self.shift = None
        self.xx = torch.zeros(D, D, **opts)
        self.sx = torch.zeros(D, **opts)
        self.xq = torch.zeros(D, L, **opts)
        self.qq = torch.zeros(L, L, **opts)
        self.scale = torch.zeros(L, **opts)  # sum_i ||raw x_l,i||^2, for the degeneracy test
        self.n = 0

    # ------------------------------------------------------------ streaming
    def update(self, xs: List[torch.Tensor]) -> None:
        if [x.shape[1] for x in xs] != self.dims:
            raise ValueError(f"layer widths changed: {[x.shape[1] for x in xs]} vs {self.dims} at the first batch")
        z = torch.cat([x.to(self.xx.device, torch.float64) for x in xs], dim=1)
        self.scale += (z * z).sum(0) @ self.seg.T
        if self.shift is None:
            self.shift = z.mean(0)
        z = z - self.shift
        q = (z * z) @ self.seg.T                           # (n, L)
        self.xx.addmm_(z.T, z)
        self.sx += z.sum(0)
        self.xq.addmm_(z.T, q)
        self.qq.addmm_(q.T, q)
        self.n += z.shape[0]

    def rebase(self, new_shift: torch.Tensor) -> None:
        """Re-expresses the sums for samples shifted by ``new_shift`` instead of ``self.shift``."""
        if self.shift is None:
            self.shift = new_shift.clone()
            return
        d = (self.shift - new_shift).to(self.xx)          # z_new = z_old + d
        N, seg = float(self.n), self.seg
        dd = (d * d) @ seg.T                               # ||d_l||^2          (L,)
        T = (self.sx * d) @ seg.T                          # sum_i z_l,i . d_l  (L,)
        Q = torch.diagonal(self.xx) @ seg.T                # sum_i ||z_l,i||^2  (L,)
        XXd = self.xx @ (seg.T * d[:, None])               # column l: sum_i z_i (z_l,i . d_l)   (D, L)
        # sum_i q_a,i t_b,i = xq[b-block, a] . d_b  -> M[a, b]
        M = (self.xq * d[:, None]).T @ seg.T               # (L, L): [a, b] = sum over b-block of xq[:, a] d
        TT = seg @ (self.xx * d[:, None] * d[None, :]) @ seg.T  # sum_i t_a,i t_b,i
        qq = (self.qq + 2 * M + 2 * M.T + 4 * TT
              + Q[:, None] * dd[None, :] + dd[:, None] * Q[None, :]
              + 2 * T[:, None] * dd[None, :] + 2 * dd[:, None] * T[None, :]
              + N * dd[:, None] * dd[None, :])
        xq = (self.xq + 2 * XXd + self.sx[:, None] * dd[None, :] + d[:, None] * Q[None, :]
              + 2 * d[:, None] * T[None, :] + N * d[:, None] * dd[None, :])
        self.xx += torch.outer(self.sx, d) + torch.outer(d, self.sx) + N * torch.outer(d, d)
        self.sx += N * d
        self.xq, self.qq = xq, qq
        self.shift = new_shift.clone()

    def merge(self, other: "ExactLinearSums") -> None:
        if other.dims != self.dims:
            raise ValueError(f"cannot merge exact sums over layer widths {other.dims} into {self.dims}")
        if other.n == 0:
            return
        if self.n == 0:
            self.shift = other.shift.clone().to(self.xx.device)
        o = other.copy()
        o.to(self.xx.device)
        o.rebase(self.shift)
        for name in ("xx", "sx", "xq", "qq", "scale"):
            getattr(self, name).add_(getattr(o, name))
        self.n += o.n

    # ------------------------------------------------------------ results
    def hsic(self, unbiased: bool) -> torch.Tensor:
        N, seg = float(self.n), self.seg
        if not unbiased:
            c = self.xx - torch.outer(self.sx, self.sx) / N
            return seg @ (c * c) @ seg.T / (N - 1) ** 2
        tr = seg @ (self.xx * self.xx) @ seg.T - self.qq
        qsum = torch.diagonal(self.xx) @ seg.T                                  # sum_i ||z_l,i||^2
        s = (self.sx * self.sx) @ seg.T - qsum                                   # 1^T K~ 1 per layer
        v = seg @ (self.sx[:, None] * self.xx * self.sx[None, :]) @ seg.T
        u = (self.sx[:, None] * self.xq).T @ seg.T                               # [b, a] = Sx_a . xq[a-block, b]
        kl = v - u.T - u + self.qq
        return (tr + torch.outer(s, s) / ((N - 1) * (N - 2)) - 2.0 / (N - 2) * kl) / (N * (N - 3))

    def thresholds(self) -> torch.Tensor:
        eps = torch.finfo(torch.float64).eps
        return (DEGENERATE_FACTOR * eps * eps * self.scale / max(self.n, 1)) ** 2

    # ------------------------------------------------------------ persistence
    def tensors(self) -> List[torch.Tensor]:
        return [self.xx, self.sx, self.xq, self.qq, self.scale]

    def prepare_all_reduce(self, group=None) -> None:
        import torch.distributed as dist

        shift = self.shift.clone()
        dist.broadcast(shift, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
        self.rebase(shift)

    def copy(self) -> "ExactLinearSums":
        return ExactLinearSums.from_state_dict(self.state_dict(), self.xx.device, None)

    def to(self, device) -> None:
        for name in ("seg", "xx", "sx", "xq", "qq", "scale"):
            setattr(self, name, getattr(self, name).to(device))
        if self.shift is not None:
            self.shift = self.shift.to(device)

    def state_dict(self) -> Dict:
        return {"dims": list(self.dims), "n": self.n, "shift": None if self.shift is None else self.shift.clone(),
                "xx": self.xx.clone(), "sx": self.sx.clone(), "xq": self.xq.clone(), "qq": self.qq.clone(),
                "scale": self.scale.clone()}

    @classmethod
    def from_state_dict(cls, state: Dict, device, max_bytes) -> "ExactLinearSums":
        device = state["xx"].device if device is None else device
        obj = cls(state["dims"], device, max_bytes if max_bytes is not None else float("inf"))
        for name in ("xx", "sx", "xq", "qq", "scale"):
            setattr(obj, name, state[name].to(device, torch.float64).clone())
        obj.shift = None if state["shift"] is None else state["shift"].to(device, torch.float64).clone()
        obj.n = int(state["n"])
        return obj


class ExactSums:
    """The exact estimator of ``CKAAccumulator`` (linear kernel): feature-space sums over all
    samples, so the result is CKA over the whole data set at once. Offers the methods of its
    sibling :class:`mpruner.engine.minibatch.MinibatchSums`."""

    pools_samples = True  # the samples of all batches form one estimate: a batch may be tiny

    def __init__(self, kernel: str, unbiased: bool, sigma: float, precision: str, nan_policy: str, max_bytes: int):
        self.unbiased, self.nan_policy, self.max_bytes = unbiased, nan_policy, max_bytes
        self.sums: Optional[ExactLinearSums] = None  # made at the first batch, which fixes the widths

    @property
    def device(self) -> Optional[torch.device]:
        return None if self.sums is None else self.sums.xx.device

    def update(self, xs: List[torch.Tensor], names: Sequence[str], index: int) -> bool:
        """Adds one batch; False when it holds NaN/Inf and ``nan_policy="skip"``."""
        finite = [bool(torch.isfinite(x).all()) for x in xs]
        if not all(finite):
            if self.nan_policy == "skip":
                return False
            bad = [i for i, f in enumerate(finite) if not f]
            raise NonFiniteError(f"NaN or Inf in the activations of {', '.join(names[i] for i in bad)} "
                                 f"(batch {index}); fix the model/inputs or pass nan_policy='skip'",
                                 [names[i] for i in bad], index)
        if self.sums is None:
            self.sums = ExactLinearSums([x.shape[1] for x in xs], xs[0].device, self.max_bytes)
        self.sums.update(xs)
        return True

    def take_device_skips(self) -> Tuple[int, int]:
        return 0, 0  # every check is on the host

    def raise_deferred(self, names: Sequence[str]) -> None:
        """Nothing is deferred: NaN/Inf raise in ``update``."""

    def hsic(self) -> torch.Tensor:
        return self.sums.hsic(self.unbiased)

    def result(self, num_samples: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.unbiased and num_samples < 4:
            raise ValueError(f"the exact unbiased estimator needs >= 4 samples in all, got {num_samples}")
        return self.sums.hsic(self.unbiased), self.sums.thresholds()

    def merge(self, other: "ExactSums") -> None:
        self.sums.merge(other.sums)

    def all_reduce(self, group=None) -> None:
        import torch.distributed as dist

        self.sums.prepare_all_reduce(group)  # one common shift on every rank
        for t in self.sums.tensors():
            dist.all_reduce(t, group=group)

    def total_samples(self, n: int) -> None:
        self.sums.n = n

    def state_dict(self) -> Dict:
        return {"exact": self.sums.state_dict()}

    def load_state_dict(self, state: Dict, device, max_bytes: int) -> None:
        self.sums = ExactLinearSums.from_state_dict(state["exact"], device, max_bytes)

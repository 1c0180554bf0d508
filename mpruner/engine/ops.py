"""Loads the compiled engine (``torch.ops.mpruner``) and registers fake kernels.

The fake (meta) implementations give output shapes without running anything, so the
operators work under ``torch.compile`` and ``torch.library.opcheck``. Only the backend
kernels need them: the public ops are CompositeImplicitAutograd and decompose into
ATen calls plus these kernels.
"""
from __future__ import annotations

import torch

try:
    from .. import _C  # noqa: F401  (importing registers torch.ops.mpruner.*)
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "mpruner's compiled engine (mpruner._C) is not built or does not match the "
        f"installed torch {torch.__version__}. Build it with "
        "`pip install --no-build-isolation -e .` (or `make build`). Original error: " + str(exc)
    ) from exc

ops = torch.ops.mpruner


@torch.library.register_fake("mpruner::_hsic_partials")
def _hsic_partials_fake(grams, lengths, unbiased):  # lengths: (B,) or None (all T)
    L, B, T, _ = grams.shape
    return (grams.new_empty((B, L, L), dtype=torch.float64),
            grams.new_empty((B, L, T), dtype=torch.float64))


@torch.library.register_fake("mpruner::_hsic_finish")
def _hsic_finish_fake(pairs, rowsums, n, unbiased, scale, thr_factor, index, skip, sums, thr_sums, flags):
    return None  # updates sums, thr_sums and flags in place


@torch.library.register_fake("mpruner::_center_apply")
def _center_apply_fake(k, rowsums, totals, unbiased):
    return torch.empty_like(k)


@torch.library.register_fake("mpruner::_rbf_apply")
def _rbf_apply_fake(g, diag, inv_two_sigma2):
    return torch.empty_like(g)


def _split_width(split: str) -> int:
    return 4 if split == "hilo" else 1


@torch.library.register_fake("mpruner::_shift_features")
def _shift_features_fake(xs, shift, dtype, split):
    G, (n, d) = len(xs), xs[0].shape
    return (xs[0].new_empty((G, n, _split_width(split) * d), dtype=dtype),
            xs[0].new_empty((G * d,), dtype=torch.float64))


@torch.library.register_fake("mpruner::_layer_grams")
def _layer_grams_fake(xs, shift, split, block):
    n, total = xs[0].shape[0], sum(x.shape[1] for x in xs)
    return (xs[0].new_empty((len(xs), n, n)), xs[0].new_empty((total,), dtype=torch.float64))


@torch.library.register_fake("mpruner::_token_hsic_fused")
def _token_hsic_fused_fake(hidden, positions, lengths, unbiased, max_gram_bytes):
    return positions.new_empty((positions.shape[0], len(hidden), len(hidden)), dtype=torch.float64)


def build_info() -> dict:
    """How the extension was compiled: CUDA yes/no, CUDA version and archs, OpenMP."""
    return dict(_C.build_info())


def cuda_built() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return bool(_C.build_info()["cuda"])

"""The CKA API: Grams, centering, HSIC, CKA between layers, per-sequence (token) CKA.

All heavy lifting happens in ``torch.ops.mpruner`` (C++/CUDA); these functions check
inputs, pick dtypes and turn HSIC sums into CKA. Results are float64.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch

from ..stacklevel import user_stacklevel
from . import checks, gram_strategy, precision as modes
from .ops import ops

# A layer whose self-HSIC is below (DEGENERATE_FACTOR * eps^2 * ||x||^2)^2 is
# constant up to rounding: real variation sits many orders of magnitude above that.
DEGENERATE_FACTOR = 1e4


def gram(x: torch.Tensor, kernel: str = "linear", sigma: Optional[float] = None, *, batched: bool = False,
         precision: str = "highest") -> torch.Tensor:
    """Gram matrix of the samples (rows) of ``x``.

    Args:
        x: (n, ...) activations, features flattened per sample; with ``batched=True``,
            (b, n, ...) holding b independent sample sets.
        kernel: ``"linear"`` (X X^T of the feature-centered X) or ``"rbf"``
            (exp(-d^2 / (2 sigma_f^2 median d^2))).
        sigma: RBF bandwidth as a fraction of the median distance (default 0.5).
        precision: the float32 GEMM mode, ``"highest"`` (IEEE), ``"high"`` (TF32 on CUDA,
            two bfloat16 terms on CPU; ``"tf32"`` is an alias) or ``"medium"`` (bfloat16);
            see :mod:`mpruner.engine.precision`. float64 input is computed in float64
            whatever the mode; without the hardware the mode falls back to ``"highest"``.

    Returns:
        (n, n) or (b, n, n), float32 (float64 for float64 input). The linear Gram is of
        the feature-centered samples, which leaves every HSIC/CKA unchanged.
    """
    checks.check_choice(kernel, checks.KERNELS, "kernel")
    checks.check_precision(precision)
    f = checks.check_sigma(sigma, kernel)
    if batched:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError("with batched=True, x must be a tensor of shape (b, n, ...)")
        xs = [checks.as_samples(x[i], f"x[{i}]") for i in range(x.shape[0])]
    else:
        xs = [checks.as_samples(x, "x")]
    if kernel == "rbf" and xs[0].shape[0] < 2:
        raise ValueError(f"x has n={xs[0].shape[0]} samples; the RBF kernel needs n >= 2")
    mode = modes.resolve(precision, xs[0].device)
    # Shifted by the exact column means: the Gram of the centered samples, as documented
    # (the engine's own Grams take a cheaper shift; HSIC does not see the difference).
    means = torch.cat([x.mean(0, dtype=torch.float64) for x in xs])
    with checks.gemm_precision(mode, xs[0].device):
        g, _ = ops.grams_shifted(xs, means, kernel, f, False, mode)  # the full Gram, not only its upper triangle
    return g if batched else g[0]


def _check_gram(k, name, unbiased):
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor Gram matrix (…, n, n), got {type(k).__name__}")
    if not k.is_floating_point():
        raise TypeError(f"{name} has dtype {k.dtype}; pass a floating-point Gram ({name}.float())")
    if k.dim() < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"{name} must be square in its last two dimensions (…, n, n), got shape {tuple(k.shape)}")
    n = k.shape[-1]
    if n < checks.min_samples(unbiased):
        raise ValueError(f"{name} is {n}x{n}; the {'unbiased' if unbiased else 'biased'} estimator needs "
                         f"n >= {checks.min_samples(unbiased)}" + (" (or use unbiased=False)" if unbiased else ""))
    return k.detach()  # measurements, not differentiable: see inputs.as_samples (the ops compute halves in float32)


def center_gram(k: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Double centering HKH (``unbiased=False``) or U-centering (``unbiased=True``) of (…, n, n) Grams."""
    return ops.center_gram(_check_gram(k, "k", unbiased), unbiased)


def hsic(k: torch.Tensor, l: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """HSIC between symmetric Grams ``k`` and ``l`` (…, n, n): biased HSIC_0 or unbiased HSIC_1.

    Returns float64: a 0-d tensor for (n, n) inputs, shape (…) for batched ones.
    """
    k = _check_gram(k, "k", unbiased)
    l = _check_gram(l, "l", unbiased)
    if k.shape != l.shape:
        raise ValueError(f"k and l must have the same shape, got {tuple(k.shape)} and {tuple(l.shape)}")
    if k.device != l.device:
        raise ValueError(f"k is on {k.device} but l is on {l.device}; move both to one device")
    n = k.shape[-1]
    if k.dim() == 2:  # (torch.stack promotes mixed dtypes to the wider one)
        return ops.hsic_matrix(torch.stack([k, l]), unbiased)[0, 1]
    batch = k.shape[:-2]
    pair = torch.stack([k.reshape(-1, n, n), l.reshape(-1, n, n)])
    lengths = pair.new_full((pair.shape[1],), n, dtype=torch.long)
    return ops.token_hsic(pair, lengths, unbiased)[:, 0, 1].reshape(batch)


def layer_hsic(xs: List[torch.Tensor], kernel: str, unbiased: bool, sigma: float,
               precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """All-pairs HSIC of checked (n, d) layers -> ((L, L) float64, per-layer degeneracy thresholds).
    ``precision`` is a resolved mode (:func:`mpruner.engine.precision.resolve`)."""
    grams, _ = shifted_grams(xs, kernel, sigma, precision)
    h = ops.hsic_matrix(grams, unbiased)
    scale, factor = degeneracy_scale(xs, kernel, grams.dtype)
    return h, (factor * scale) ** 2


def shifted_grams(xs: List[torch.Tensor], kernel: str, sigma: float, precision: str,
                  shift: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The Grams (L, n, n) the HSIC reads (upper triangle) of checked layers at a resolved
    ``precision``, by the measured Gram strategy, with the features shifted by ``shift``
    (flat (sum d_l,); None: each layer's first row, so that a batch's Grams depend on that
    batch alone) in the pass that forms the GEMM's input; also that pass's column sums of
    the shifted features (flat float64). Never reads a value back to the host once the
    shape's strategy is known, so a CUDA graph can capture it."""
    with checks.gemm_precision(precision, xs[0].device):
        block = gram_strategy.block_for(xs, precision, kernel)
        return ops.grams_shifted(xs, shift, kernel, sigma, True, precision, block)


def degeneracy_scale(xs: List[torch.Tensor], kernel: str, gram_dtype: torch.dtype) -> Tuple[torch.Tensor, float]:
    """(scale (L,) float64, factor): a layer is degenerate when its self-HSIC is at most (factor * scale)^2."""
    eps = torch.finfo(gram_dtype).eps
    if kernel == "rbf":  # kernel values are at most 1
        scale = torch.ones(len(xs), dtype=torch.float64, device=xs[0].device)
    else:
        # Rough per-layer magnitude from a few samples (a full pass would cost more than
        # the HSIC reduction); a constant layer's HSIC sits ~20 orders of magnitude lower.
        # One multi-tensor norm over views of the first rows: a few launches whatever L is.
        m = min(xs[0].shape[0], 8)
        scale = torch.stack(torch._foreach_norm([x[:m] for x in xs], 2, dtype=torch.float64)).pow(2) / m
    return scale, DEGENERATE_FACTOR * eps * eps


class NonFiniteError(ValueError):
    """NaN/Inf in the activations: ``layers`` (names) and ``batch`` (index, or None) say where."""

    def __init__(self, message: str, layers: Sequence[str] = (), batch=None):
        super().__init__(message)
        self.layers, self.batch = list(layers), batch


def check_finite(h: torch.Tensor) -> List[int]:
    """Indices of layers whose self-HSIC is NaN/Inf (their activations held NaN or Inf)."""
    if checks.compiling():
        return []
    bad = (~torch.isfinite(torch.diagonal(h))).nonzero().flatten().tolist()
    return bad


def nonfinite_error(bad, names, where="", batch=None):
    listed = ", ".join(names[i] for i in bad)
    return NonFiniteError(f"NaN or Inf in the activations of {listed}{where}; fix the model/inputs, or with "
                          "CKAAccumulator pass nan_policy='skip' to drop such batches", [names[i] for i in bad], batch)


def hsic_to_cka(h: torch.Tensor, thresholds: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """CKA = H_ab / sqrt(H_aa H_bb); degenerate (constant) layers get NaN rows/columns and a warning."""
    d = torch.diagonal(h)
    degenerate = d <= thresholds
    safe = torch.where(degenerate, torch.ones_like(d), d)
    c = h / torch.sqrt(safe[:, None] * safe[None, :])
    nan = torch.full_like(c, float("nan"))
    c = torch.where(degenerate[:, None] | degenerate[None, :], nan, c)
    if not checks.compiling():
        idx = degenerate.nonzero().flatten().tolist()
        if idx:
            listed = ", ".join(names[i] for i in idx)
            warnings.warn(f"{listed}: zero HSIC with itself (the layer is constant on these samples), so its "
                          "CKA is undefined; its row and column are NaN", RuntimeWarning, stacklevel=user_stacklevel())
    return c


def cka_matrix(features, kernel: str = "linear", unbiased: bool = False, sigma: Optional[float] = None,
               other=None, *, precision: str = "highest") -> torch.Tensor:
    """CKA between every pair of L layers (or L x M against ``other``) on one set of samples.

    Args:
        features: list of L tensors (n, ...), same n (same samples), any trailing shape.
        kernel: ``"linear"`` or ``"rbf"``; ``sigma`` the RBF bandwidth fraction (0.5).
        unbiased: use the unbiased HSIC_1 (needs n >= 4) instead of the biased HSIC_0.
        other: optional list of M tensors (n, ...) -> the (L, M) cross matrix.
        precision: the float32 GEMM mode: ``"highest"`` (IEEE float32, default), ``"high"``
            (~16 mantissa bits: TF32 on CUDA, two bfloat16 terms on a CPU's matrix engine;
            ``"tf32"`` is an alias) or ``"medium"`` (bfloat16 inputs, float32 sums). Centering
            and HSIC keep their precision. float64 activations are computed in float64
            whatever the mode. A CPU or GPU without the mode's hardware falls back to
            ``"highest"`` with a warning. Measured errors: the Performance page.

    Returns:
        (L, L) or (L, M) float64 tensor on the activations' device.
    """
    return _cka_matrix(features, kernel, unbiased, sigma, other, precision)


def _cka_matrix(features, kernel, unbiased, sigma, other, precision, labels=None):
    """cka_matrix, with ``labels`` naming the layers in errors and warnings (cka's x and y)."""
    checks.check_choice(kernel, checks.KERNELS, "kernel")
    checks.check_precision(precision)
    f = checks.check_sigma(sigma, kernel)
    feats = checks.as_layer_list(features, "features")
    oth = None if other is None else checks.as_layer_list(other, "other")
    xs = checks.prepare_layers(feats, unbiased, other=oth, labels=labels)
    names = list(labels) if labels is not None else \
        [f"features[{i}]" for i in range(len(feats))] + [f"other[{j}]" for j in range(len(oth or []))]
    h, thr = layer_hsic(xs, kernel, unbiased, f, modes.resolve(precision, xs[0].device))
    bad = check_finite(h)
    if bad:
        raise nonfinite_error(bad, names)
    c = hsic_to_cka(h, thr, names)
    L = len(feats)
    return c if oth is None else c[:L, L:]


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", unbiased: bool = False,
        sigma: Optional[float] = None, *, precision: str = "highest") -> torch.Tensor:
    """CKA between two activations x (n, ...) and y (n, ...) of the same samples -> 0-d float64.

    The options are :func:`cka_matrix`'s (``precision``: ``"highest"``, ``"high"``, ``"medium"``).
    """
    if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
        raise TypeError("cka compares two tensors x and y; for lists of layers use mpruner.cka_matrix")
    return _cka_matrix([x], kernel, unbiased, sigma, [y], precision, labels=("x", "y"))[0, 0]




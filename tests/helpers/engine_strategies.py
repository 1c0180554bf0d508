"""Hypothesis strategies for the CKA engine's input space, and the checks every result must pass.

Reusable: a new engine function gets property tests by adding one entry to
``tests/engine/test_properties.FUNCTIONS`` (a callable on a list of layers and the float64
oracle it must match); new inputs by adding a layout to ``LAYOUTS``.

The input space (see README "Reliability"):

* n from the estimator's minimum (2 biased, 4 unbiased) to 300 samples, d from 1 to 64
  features, L from 1 to 70 layers (large L with small n and d, to stay fast);
* every floating dtype, mixed across layers, and mixed widths;
* offsets up to 1e4 (float32/float64) and 1e2 (float16/bfloat16) times the spread,
  scales from 1e-6 to 1e6 (1e-3 to 1e2 for half types, whose range ends at 65504);
* layouts: contiguous, a strided slice, a transposed (Fortran-order) tensor, an expanded
  (stride-0) feature, 4-d channels-last maps, and a sliced view of a larger tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from hypothesis import strategies as st

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)
MAX_OFFSET = {torch.float64: 1e4, torch.float32: 1e4, torch.float16: 1e2, torch.bfloat16: 1e2}
SCALES = {torch.float64: (-6, 6), torch.float32: (-6, 6), torch.float16: (-3, 2), torch.bfloat16: (-3, 2)}
# Absolute tolerance on CKA in [-1, 1] against float64 on the same rounded inputs, by the
# dtype the engine computes in (half types are computed in float32). The float32 term grows
# with the offset-to-spread ratio: feature means are taken in float32 (error ~ eps * offset),
# and what is left of the offset enters the Gram.
BASE_TOL = {torch.float64: 1e-9, torch.float32: 2e-5}


def tolerance(dtypes, offset: float) -> float:
    if all(d == torch.float64 for d in dtypes):
        return BASE_TOL[torch.float64] * (1 + offset) ** 2 * 1e-4 + BASE_TOL[torch.float64]
    return BASE_TOL[torch.float32] * (1 + offset / 1e3)


def _contiguous(x):
    return x


def _strided(x):  # every other feature of a twice-as-wide tensor
    wide = torch.repeat_interleave(x, 2, dim=1)
    return wide[:, ::2]


def _transposed(x):  # column-major storage
    return x.T.contiguous().T


def _expanded(x):  # (n, 3, d) with stride 0 over the middle dimension: x repeated, never copied
    return x.unsqueeze(1).expand(-1, 3, -1)


def _channels_last(x):  # (n, d) -> (n, d, 1, 1) in channels-last memory
    return x.reshape(x.shape[0], x.shape[1], 1, 1).contiguous(memory_format=torch.channels_last)


def _sliced(x):  # a view into the middle of a larger tensor
    big = torch.zeros(x.shape[0] + 3, x.shape[1] + 2, dtype=x.dtype)
    big[1:-2, 1:-1] = x
    return big[1:-2, 1:-1]


LAYOUTS = {"contiguous": _contiguous, "strided": _strided, "transposed": _transposed, "expanded": _expanded,
           "channels_last": _channels_last, "sliced": _sliced}


@dataclass
class Case:
    """One generated call: L layers of n samples, their dtypes/layouts, and how hard they are."""
    layers: List[torch.Tensor]
    dtypes: List[torch.dtype]
    layouts: List[str]
    offset: float          # offset over spread (the condition that costs float32 accuracy)
    unbiased: bool

    @property
    def as_float64(self) -> List[np.ndarray]:
        """What the oracle sees: the inputs as rounded to their dtype, in float64."""
        return [x.double().reshape(x.shape[0], -1).numpy() for x in self.layers]

    def __repr__(self):
        n = self.layers[0].shape[0]
        return (f"Case(L={len(self.layers)}, n={n}, widths={[x.shape[1:] for x in self.layers]}, "
                f"dtypes={[str(d)[6:] for d in self.dtypes]}, layouts={self.layouts}, offset={self.offset:.3g}, "
                f"unbiased={self.unbiased})")


@st.composite
def cases(draw, max_layers: int = 70, max_n: int = 300, dtypes=DTYPES, mixed: bool = True, unbiased=None,
          layouts=tuple(LAYOUTS)):
    unbiased = draw(st.booleans()) if unbiased is None else unbiased
    L = draw(st.integers(1, max_layers))
    budget = 6000 // L  # samples x features per layer, so that 70 layers stay fast
    n = draw(st.integers(4 if unbiased else 2, max(4, min(max_n, budget))))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, generator=g, dtype=torch.float64)  # shared structure: CKA spread over (0, 1)
    first = draw(st.sampled_from(dtypes))
    offset_frac = draw(st.floats(0, 1))
    layers, dts, lays, worst = [], [], [], 0.0
    for i in range(L):
        dt = draw(st.sampled_from(dtypes)) if mixed and i else first
        d = draw(st.integers(1, max(1, min(64, budget // n))))
        lo, hi = SCALES[dt]
        scale = 10.0 ** draw(st.floats(lo, hi))
        offset = offset_frac * MAX_OFFSET[dt]
        w = torch.randn(3, d, generator=g, dtype=torch.float64)
        x = torch.tanh(base @ w) + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64) + offset
        x = (x * scale).to(dt)
        layout = draw(st.sampled_from(layouts))
        layers.append(LAYOUTS[layout](x))
        dts.append(dt)
        lays.append(layout)
        worst = max(worst, offset)
    return Case(layers, dts, lays, worst, unbiased)


def degenerate(x: np.ndarray, dtype: torch.dtype) -> bool:
    """Whether a layer is constant up to its dtype's rounding (its CKA is then NaN, with a warning)."""
    eps = torch.finfo(torch.float32 if dtype in HALF else dtype).eps
    spread = np.abs(x - x.mean(0)).max()
    return spread <= 1e3 * eps * max(np.abs(x).max(), np.finfo(np.float64).tiny)


def check_cka(got: torch.Tensor, expected: np.ndarray, case: Case, degenerate_rows, tol: float):
    """Every entry is NaN exactly where a layer is degenerate, else within tol, and within [-1, 1]."""
    got = got.detach().cpu().double().numpy()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    nan = np.isnan(got)
    allowed = np.zeros_like(nan)
    for i in degenerate_rows:
        allowed[i, :] = True
        if got.shape[0] == got.shape[1]:
            allowed[:, i] = True
    assert not (nan & ~allowed).any(), f"silent NaN at {np.argwhere(nan & ~allowed)[:3].tolist()} for {case}"
    ok = ~nan & ~allowed
    assert np.all(np.abs(got[ok]) <= 1 + 1e-6), f"CKA outside [-1, 1]: {np.abs(got[ok]).max()} for {case}"
    if ok.any():
        err = float(np.abs(got[ok] - expected[ok]).max())
        assert err <= tol, f"max error {err:.3g} > {tol:.3g} for {case}"
        return err
    return 0.0


def finite_float(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)

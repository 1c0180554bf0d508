"""The GEMM precision modes of the CKA engine, named as ``torch.set_float32_matmul_precision``.

- ``"highest"`` (default): IEEE float32 GEMMs.
- ``"high"``: about 16 mantissa bits. CPU: each (shifted) value as hi + lo, both exactly
  bfloat16, and G = hi hi^T + hi lo^T + lo hi^T with float32 accumulation, one GEMM on the
  bfloat16 matrix engine (AMX or AVX512-BF16, through torch's mkldnn ``bf16`` matmul mode);
  CUDA: TF32 tensor cores.
- ``"medium"``: bfloat16 GEMM inputs with float32 accumulation (the CPU's matrix engine;
  CUDA's bfloat16 tensor cores).

Centering before the GEMM and every sum after it keep their precision (float32 shift,
float64 HSIC). ``"tf32"`` is accepted as an alias of ``"high"``. float64 activations are
computed in float64 whatever the mode (a float64 request means exact). A CPU without a
bfloat16 matrix engine runs ``"high"`` and ``"medium"`` as ``"highest"`` (the emulation
would be slower), with one warning naming the CPU's capability.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from ..stacklevel import user_stacklevel

PRECISIONS = ("highest", "high", "medium")
ALIASES = {"tf32": "high"}
# MPRUNER_CPU_BF16=1 runs the bfloat16 arithmetic on any CPU (exact, slow without the
# matrix engine: for tests of the numerics), 0 reports the CPU as having none.
FORCE_ENV = "MPRUNER_CPU_BF16"


def canonical(precision) -> str:
    """The mode's canonical name; an unknown one is an error listing the valid names."""
    name = ALIASES.get(precision, precision) if isinstance(precision, str) else precision
    if name not in PRECISIONS:
        valid = ", ".join(repr(p) for p in PRECISIONS + tuple(ALIASES))
        raise ValueError(f"precision must be one of {valid} (as torch.set_float32_matmul_precision names them; "
                         f"'tf32' is 'high'); got {precision!r}")
    return name


@dataclass(frozen=True)
class CpuMatrixEngine:
    """What the CPU offers bfloat16 GEMMs: ``bf16`` says whether high/medium run natively."""

    capability: str          # torch.backends.cpu.get_cpu_capability(), e.g. "AVX2", "AVX512"
    amx_bf16: bool
    avx512_bf16: bool
    forced: Optional[bool] = None  # MPRUNER_CPU_BF16 overrides the detection

    @property
    def bf16(self) -> bool:
        return self.forced if self.forced is not None else (self.amx_bf16 or self.avx512_bf16)

    def describe(self) -> str:
        have = [n for n, f in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16)) if f]
        text = f"{self.capability}" + (f" with {', '.join(have)}" if have else ", no AMX-BF16 or AVX512-BF16")
        if self.forced is not None:
            text += f" ({FORCE_ENV}={int(self.forced)})"
        return text


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def _detected() -> CpuMatrixEngine:
    flags = _cpu_flags()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = "unknown"
    return CpuMatrixEngine(capability, "amx_bf16" in flags, "avx512_bf16" in flags)


def cpu_matrix_engine() -> CpuMatrixEngine:
    """The CPU's bfloat16 GEMM support, detected at run time (``/proc/cpuinfo`` flags and
    torch's CPU capability); ``MPRUNER_CPU_BF16=1|0`` overrides it."""
    info = _detected()
    force = os.environ.get(FORCE_ENV)
    if force in ("0", "1"):
        return CpuMatrixEngine(info.capability, info.amx_bf16, info.avx512_bf16, force == "1")
    if force:
        raise ValueError(f"{FORCE_ENV} must be 1 (use the bfloat16 path) or 0 (treat the CPU as without one); "
                         f"got {force!r}")
    return info


def resolve(precision: str, device: torch.device) -> str:
    """The mode the GEMMs of ``device`` will run: ``precision`` itself, or ``"highest"``
    (with a warning) where the hardware lacks it."""
    name = canonical(precision)
    if name == "highest":
        return name
    device = torch.device(device)
    if device.type == "cpu":
        engine = cpu_matrix_engine()
        if not engine.bf16:
            warnings.warn(f"precision={precision!r} runs on a bfloat16 matrix engine, which this CPU lacks "
                          f"({engine.describe()}); computing at precision='highest' (IEEE float32), which is "
                          "faster here than an emulation", RuntimeWarning, stacklevel=user_stacklevel())
            return "highest"
        return name
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major < 8:  # TF32 and bfloat16 tensor cores came with sm_80
            warnings.warn(f"precision={precision!r} needs TF32/bfloat16 tensor cores (sm_80 or newer); "
                          f"{torch.cuda.get_device_name(device)} is sm_{major}x: computing at precision='highest'",
                          RuntimeWarning, stacklevel=user_stacklevel())
            return "highest"
        return name
    return "highest"  # other backends: their float32 GEMM as it is


# One lock for the process-wide matmul settings: concurrent scopes (threads) take turns,
# so none restores a value another one set.
_LOCK = threading.RLock()


def _setting(backend):
    """(get, set) of a backend's float32 matmul mode, through torch's ``fp32_precision``
    where it exists (mixing it with ``allow_tf32`` is an error there)."""
    matmul = backend.matmul
    if hasattr(matmul, "fp32_precision"):
        return (lambda: matmul.fp32_precision), (lambda v: setattr(matmul, "fp32_precision", v))
    if backend is torch.backends.cuda:
        return ((lambda: "tf32" if matmul.allow_tf32 else "ieee"),
                (lambda v: setattr(matmul, "allow_tf32", v == "tf32")))
    return None


@contextlib.contextmanager
def gemm_scope(precision: str, device: torch.device):
    """torch's float32 matmul mode for a resolved ``precision`` on ``device``, for the scope
    only: CUDA ``tf32`` for "high" (else IEEE), the CPU's mkldnn ``bf16`` for "high" and
    "medium" (their GEMM inputs are exact bfloat16 values, so the matrix engine adds no
    rounding; else IEEE, whatever torch's global mode says). The previous setting is restored on exit, under a lock (thread-safe)."""
    name = canonical(precision)
    device = torch.device(device)
    if device.type == "cuda":
        backend, want = torch.backends.cuda, "tf32" if name == "high" else "ieee"
    elif device.type == "cpu":
        backend, want = torch.backends.mkldnn, "ieee" if name == "highest" else "bf16"
    else:
        backend, want = None, None
    access = _setting(backend) if backend is not None and not torch.compiler.is_compiling() else None
    if access is None:
        yield
        return
    get, put = access
    with _LOCK:
        previous = get()
        if previous == want:
            yield
            return
        put(want)
        try:
            yield
        finally:
            put(previous)

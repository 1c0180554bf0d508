"""What this machine's CPU can do, read at run time (the processor can change between runs).

The bfloat16 matrix engines matter to mpruner: on a CPU with AMX-BF16 or AVX512-BF16 a bf16
GEMM runs several times faster than a float32 one, so bf16 autocast pays off in training; on a
CPU without one, bf16 is emulated and slower than float32. Everything here reads
:func:`cpu_features` (one place to mock in tests).
"""
from __future__ import annotations

import functools
from typing import Dict, Optional


@functools.lru_cache(maxsize=1)
def _read_features() -> Dict[str, object]:
    try:
        import torch

        features = dict(torch._C._cpu._get_cpu_capability())  # torch's own CPUID reading (cpuinfo)
    except (ImportError, AttributeError, RuntimeError):
        features = {}
    if "amx_bf16" not in features:  # an older torch: the kernel's flags
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        features.update(amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags)
    return features


def cpu_features() -> Dict[str, object]:
    """The CPU's feature flags (``amx_bf16``, ``avx512_bf16``, ``avx2``, ..., ``cpu_name``)."""
    return dict(_read_features())


def cpu_name() -> str:
    return str(cpu_features().get("cpu_name") or "unknown CPU")


def bf16_matrix_engine() -> Optional[str]:
    """``"AMX-BF16"`` or ``"AVX512-BF16"`` when the CPU multiplies bfloat16 matrices natively,
    else None (bfloat16 is then emulated, slower than float32)."""
    features = cpu_features()
    if features.get("amx_bf16"):
        return "AMX-BF16"
    if features.get("avx512_bf16"):
        return "AVX512-BF16"
    return None

"""Build mpruner._C against the torch that is already installed.

    pip install --no-build-isolation -e .

Environment:
  FORCE_CUDA=1       build the CUDA kernels even when no GPU / CUDA torch is detected
  FORCE_ONLY_CPU=1   build the CPU kernels only (wins over FORCE_CUDA)
  TORCH_CUDA_ARCH_LIST  e.g. "9.0" (default "8.0;9.0+PTX" when no GPU is visible: PTX lets newer GPUs JIT)
  MAX_JOBS           parallel compile jobs (ninja)
  MPRUNER_DEBUG=1    -O0 -g
"""
import glob
import os
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def resolve_config():
    force_cpu = _flag("FORCE_ONLY_CPU")
    force_cuda = _flag("FORCE_CUDA")
    torch_has_cuda = torch.version.cuda is not None
    if force_cpu:
        with_cuda, why = False, "FORCE_ONLY_CPU=1"
    elif force_cuda:
        with_cuda, why = True, "FORCE_CUDA=1"
    elif torch_has_cuda and CUDA_HOME is not None:
        with_cuda, why = True, f"CUDA torch and nvcc found at {CUDA_HOME}"
    else:
        with_cuda = False
        why = "torch is a CPU build" if not torch_has_cuda else "no CUDA toolkit found (set CUDA_HOME)"
    if with_cuda and CUDA_HOME is None:
        sys.exit("mpruner: FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
    if with_cuda and not torch_has_cuda:
        sys.exit(f"mpruner: a CUDA build needs a CUDA build of torch (found torch {torch.__version__})")
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch would otherwise guess from a GPU that is not there.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    return with_cuda, why


def make_extension(with_cuda):
    debug = _flag("MPRUNER_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++17 or C++20).
    cxx = opt + ["-fopenmp", "-fvisibility=hidden"]
    define_macros = [("MPRUNER_VERSION", '"%s"' % _version())]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if not with_cuda:
        return CppExtension(
            "mpruner._C", sources, include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    define_macros.append(("MPRUNER_WITH_CUDA", "1"))
    define_macros.append(("MPRUNER_CUDA_ARCHS", '"%s"' % os.environ.get("TORCH_CUDA_ARCH_LIST", "")))
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "mpruner._C", sources, include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
    )


def _version():
    scope = {}
    with open(os.path.join(ROOT, "mpruner", "version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


with_cuda, why = resolve_config()
print("mpruner build configuration:")
print(f"  torch            {torch.__version__} (CUDA {torch.version.cuda})")
print(f"  CUDA kernels     {'yes' if with_cuda else 'no'} ({why})")
if with_cuda:
    print(f"  CUDA_HOME        {CUDA_HOME}")
    print(f"  arch list        {os.environ.get('TORCH_CUDA_ARCH_LIST')}")
print(f"  MAX_JOBS         {os.environ.get('MAX_JOBS', '(ninja default)')}")
sys.stdout.flush()

setup(
    ext_modules=[make_extension(with_cuda)],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

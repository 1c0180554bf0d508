"""Build mpruner._C against the torch that is already installed.

    pip install --no-build-isolation -e .

Environment:
  FORCE_CUDA=1       build the CUDA kernels even when no GPU / CUDA torch is detected
  FORCE_ONLY_CPU=1   build the CPU kernels only (wins over FORCE_CUDA)
  TORCH_CUDA_ARCH_LIST  e.g. "9.0" (default "8.0;9.0+PTX" when no GPU is visible: PTX lets newer GPUs JIT)
  MAX_JOBS           parallel compile jobs (ninja)
  MPRUNER_DEBUG=1    -O0 -g

The CUDA headers that ATen's CUDA headers include (cuBLAS, cuBLASLt, cuSPARSE, cuSOLVER) are
looked up in the toolkit first, then in the pip packages beside torch (nvidia/*/include: the
CUDA wheels torch depends on), so a toolkit that has only nvcc builds without CPATH.
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
# Included by ATen/cuda/CUDAContext.h; a toolkit with only nvcc lacks them.
CUDA_LIBRARY_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


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


def _env_include_dirs():
    dirs = []
    for var in ("CPATH", "CPLUS_INCLUDE_PATH", "C_INCLUDE_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    return dirs


def cuda_header_dirs(cuda_home, site_dirs, searched=()):
    """(folders to add, headers found nowhere) for CUDA_LIBRARY_HEADERS.

    A header the toolkit (``cuda_home``) or ``searched`` (the compiler's CPATH folders) already
    has needs nothing; else the first ``<site>/nvidia/<package>/include`` that holds it is added
    (``nvidia/cu13/include`` for CUDA 13 wheels, ``nvidia/cublas/include`` ... for CUDA 12)."""
    have = list(searched)
    if cuda_home:
        have += [os.path.join(cuda_home, "include"), os.path.join(cuda_home, "targets", "x86_64-linux", "include")]
    candidates = []
    for site in site_dirs:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    dirs, missing = [], []
    for header in CUDA_LIBRARY_HEADERS:
        if any(os.path.isfile(os.path.join(d, header)) for d in have):
            continue
        found = next((d for d in candidates if os.path.isfile(os.path.join(d, header))), None)
        if found is None:
            missing.append(header)
        elif found not in dirs:
            dirs.append(found)
    return dirs, missing


def torch_site_dirs():
    """Where torch is installed (its nvidia wheels sit beside it), then the interpreter's site dirs."""
    import site
    import sysconfig

    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))]
    dirs += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # old virtualenvs
        pass
    return list(dict.fromkeys(d for d in dirs if d and os.path.isdir(d)))


def resolve_cuda_header_dirs(cuda_home, site_dirs=None):
    """The extra include folders of a CUDA build; exits with the fix when a header is nowhere."""
    dirs, missing = cuda_header_dirs(cuda_home, torch_site_dirs() if site_dirs is None else site_dirs,
                                     _env_include_dirs())
    if missing:
        sys.exit(f"mpruner: the CUDA headers {', '.join(missing)} are neither in the toolkit ({cuda_home}) nor in "
                 "a pip nvidia/*/include folder beside torch; install the CUDA toolkit's math libraries "
                 "(cuBLAS, cuSPARSE, cuSOLVER) or the matching nvidia-* wheels, or point CPATH at their headers")
    return dirs


def system_include_flags(dirs):
    """-isystem: searched after the -I folders (the toolkit's own headers win) and quiet."""
    flags = []
    for d in dirs:
        flags += ["-isystem", d]
    return flags


def make_extension(with_cuda, header_dirs=()):
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
    cxx = cxx + system_include_flags(header_dirs)
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"] + system_include_flags(header_dirs)
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


def main():
    with_cuda, why = resolve_config()
    header_dirs = resolve_cuda_header_dirs(CUDA_HOME) if with_cuda else []
    print("mpruner build configuration:")
    print(f"  torch            {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CUDA kernels     {'yes' if with_cuda else 'no'} ({why})")
    if with_cuda:
        print(f"  CUDA_HOME        {CUDA_HOME}")
        print(f"  arch list        {os.environ.get('TORCH_CUDA_ARCH_LIST')}")
        print(f"  CUDA headers     {', '.join(header_dirs) or 'the toolkit / CPATH'}")
    print(f"  MAX_JOBS         {os.environ.get('MAX_JOBS', '(ninja default)')}")
    sys.stdout.flush()
    setup(
        ext_modules=[make_extension(with_cuda, header_dirs)],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


# setuptools runs this file as __main__ (pip and `python setup.py` alike); tests import it.
if __name__ == "__main__":
    main()

"""setup.py: where a CUDA build finds the cuBLAS / cuSPARSE / cuSOLVER headers that ATen's CUDA
headers include, checked against fake toolkit and pip layouts in a temporary folder."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("mpruner_setup_under_test", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


def _touch(folder, *names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        open(os.path.join(folder, name), "w").close()


def _nvcc_only_toolkit(tmp_path):
    cuda = tmp_path / "cuda-13.0"
    _touch(str(cuda / "include"), "cuda_runtime.h", "cuda.h")  # nvcc and the runtime, no math libraries
    _touch(str(cuda / "bin"), "nvcc")
    return str(cuda)


def test_headers_come_from_the_cuda13_wheel_folder(setup_py, tmp_path):
    cuda = _nvcc_only_toolkit(tmp_path)
    site = tmp_path / "site-packages"
    _touch(str(site / "nvidia" / "cu13" / "include"), *HEADERS, "cuda_runtime.h")
    _touch(str(site / "nvidia" / "cudnn" / "include"), "cudnn.h")
    dirs, missing = setup_py.cuda_header_dirs(cuda, [str(site)])
    assert dirs == [str(site / "nvidia" / "cu13" / "include")] and missing == []


def test_headers_come_from_the_per_library_cuda12_wheels(setup_py, tmp_path):
    cuda = _nvcc_only_toolkit(tmp_path)
    site = tmp_path / "site-packages"
    _touch(str(site / "nvidia" / "cublas" / "include"), "cublas_v2.h", "cublasLt.h")
    _touch(str(site / "nvidia" / "cusparse" / "include"), "cusparse.h")
    _touch(str(site / "nvidia" / "cusolver" / "include"), "cusolverDn.h")
    dirs, missing = setup_py.cuda_header_dirs(cuda, [str(tmp_path / "elsewhere"), str(site)])
    assert missing == []
    assert sorted(dirs) == sorted(str(site / "nvidia" / p / "include") for p in ("cublas", "cusparse", "cusolver"))


def test_a_full_toolkit_or_cpath_needs_no_extra_folder(setup_py, tmp_path):
    cuda = _nvcc_only_toolkit(tmp_path)
    site = tmp_path / "site-packages"
    _touch(str(site / "nvidia" / "cu13" / "include"), *HEADERS)
    cpath = tmp_path / "cpath"
    _touch(str(cpath), *HEADERS)
    assert setup_py.cuda_header_dirs(cuda, [str(site)], [str(cpath)]) == ([], [])
    _touch(os.path.join(cuda, "include"), *HEADERS)
    assert setup_py.cuda_header_dirs(cuda, [str(site)]) == ([], [])


def test_a_missing_header_stops_the_build_naming_it(setup_py, tmp_path, monkeypatch):
    cuda = _nvcc_only_toolkit(tmp_path)
    site = tmp_path / "site-packages"
    _touch(str(site / "nvidia" / "cu13" / "include"), "cublas_v2.h", "cublasLt.h", "cusparse.h")
    for var in ("CPATH", "CPLUS_INCLUDE_PATH", "C_INCLUDE_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert setup_py.cuda_header_dirs(cuda, [str(site)])[1] == ["cusolverDn.h"]
    with pytest.raises(SystemExit, match=r"cusolverDn\.h.*CPATH"):
        setup_py.resolve_cuda_header_dirs(cuda, [str(site)])


def test_the_folders_are_searched_after_the_toolkit(setup_py):
    # -isystem comes after every -I folder (torch passes the toolkit's include as -I)
    assert setup_py.system_include_flags(["/a", "/b"]) == ["-isystem", "/a", "-isystem", "/b"]

// mpruner._C: loading this module registers the torch.ops.mpruner operators;
// build_info() tells Python how the extension was compiled.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MPRUNER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = MPRUNER_VERSION;
  info["cpu"] = true;
#ifdef MPRUNER_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
  info["cuda_archs"] = MPRUNER_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_archs"] = pybind11::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
  info["compiler"] = __VERSION__;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpruner C++/CUDA CKA engine (operators live in torch.ops.mpruner)";
  m.def("build_info", &build_info, "How this extension was built (CUDA, archs, OpenMP).");
}

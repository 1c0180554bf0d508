// CUDA kernels for the elementwise Gram transforms (centering, RBF); the
// per-element formulas are in mpruner/hsic_math.h, shared with the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"

namespace mpruner {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t count) {
  return std::min<int64_t>((count + kThreads - 1) / kThreads, 65535 * 16);
}

template <typename scalar_t>
__global__ void center_apply_kernel(const scalar_t* __restrict__ k, const double* __restrict__ rowsums,
                                    const double* __restrict__ totals, int64_t B, int64_t n, bool unbiased,
                                    scalar_t* __restrict__ out) {
  const int64_t count = B * n * n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < count;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / (n * n), rem = idx % (n * n), i = rem / n, j = rem % n;
    const double g = math::grand_term(totals[b], n, unbiased);
    const double ti = math::row_term(rowsums[b * n + i], n, unbiased);
    const double tj = math::row_term(rowsums[b * n + j], n, unbiased);
    out[idx] = static_cast<scalar_t>(math::centered_entry(static_cast<double>(k[idx]), ti, tj, g, i == j, unbiased));
  }
}

template <typename scalar_t>
__global__ void rbf_apply_kernel(const scalar_t* __restrict__ g, const double* __restrict__ inv, int64_t B,
                                 int64_t n, scalar_t* __restrict__ out) {
  const int64_t count = B * n * n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < count;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / (n * n), rem = idx % (n * n), i = rem / n, j = rem % n;
    const scalar_t* m = g + b * n * n;
    out[idx] = static_cast<scalar_t>(math::rbf_entry(static_cast<double>(g[idx]), static_cast<double>(m[i * n + i]),
                                                     static_cast<double>(m[j * n + j]), inv[b]));
  }
}

at::Tensor center_apply_cuda(const at::Tensor& k_in, const at::Tensor& rowsums_in, const at::Tensor& totals_in,
                             bool unbiased) {
  check_center_args(k_in, rowsums_in, totals_in);
  const int64_t B = k_in.size(0), n = k_in.size(1);
  c10::cuda::CUDAGuard guard(k_in.device());
  at::Tensor k = k_in.contiguous();
  at::Tensor r = rowsums_in.to(at::kDouble).contiguous();
  at::Tensor s = totals_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(k);
  if (k.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "mpruner_center_apply_cuda", [&] {
    center_apply_kernel<scalar_t><<<blocks_for(k.numel()), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), r.data_ptr<double>(), s.data_ptr<double>(), B, n, unbiased, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rbf_apply_cuda(const at::Tensor& g_in, const at::Tensor& inv_in) {
  check_rbf_args(g_in, inv_in);
  const int64_t B = g_in.size(0), n = g_in.size(1);
  c10::cuda::CUDAGuard guard(g_in.device());
  at::Tensor g = g_in.contiguous();
  at::Tensor inv = inv_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(g);
  if (g.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mpruner_rbf_apply_cuda", [&] {
    rbf_apply_kernel<scalar_t><<<blocks_for(g.numel()), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), inv.data_ptr<double>(), B, n, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_center_apply", &mpruner::center_apply_cuda);
  m.impl("_rbf_apply", &mpruner::rbf_apply_cuda);
}

// CUDA kernels for the Gram transforms (centering, RBF); the per-element formulas are
// in mpruner/hsic_math.h, shared with the CPU (the feature shift is shift_kernel.cu).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"
#include "mpruner/tiling.h"

namespace mpruner {
namespace {

constexpr int kThreads = 256;

int64_t row_blocks(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(1) << 20)); }

// One block per Gram row (grid-stride over the B*n rows): the row's terms are
// computed once, the elements are multiply-adds (no 64-bit div/mod per element).
template <typename scalar_t>
__global__ void center_apply_kernel(const scalar_t* __restrict__ k, const double* __restrict__ rowsums,
                                    const double* __restrict__ totals, int64_t B, int64_t n, bool unbiased,
                                    scalar_t* __restrict__ out) {
  const double scale = math::row_scale(n, unbiased);
  for (int64_t row = blockIdx.x; row < B * n; row += gridDim.x) {
    const int64_t b = row / n, i = row - b * n;
    const double g = math::grand_term(totals[b], n, unbiased);
    const double ti = rowsums[row] * scale;
    const double* r = rowsums + b * n;
    const scalar_t* src = k + row * n;
    scalar_t* dst = out + row * n;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      dst[j] = static_cast<scalar_t>(
          math::centered_entry(static_cast<double>(src[j]), ti, r[j] * scale, g, i == j, unbiased));
  }
}

template <typename scalar_t>
__global__ void rbf_apply_kernel(const scalar_t* __restrict__ g, const double* __restrict__ diag,
                                 const double* __restrict__ inv, int64_t B, int64_t n, scalar_t* __restrict__ out) {
  for (int64_t row = blockIdx.x; row < B * n; row += gridDim.x) {
    const int64_t b = row / n;
    const double* d = diag + b * n;  // coalesced, instead of a strided gather of g's diagonal
    const double gii = diag[row], w = inv[b];
    const scalar_t* src = g + row * n;
    scalar_t* dst = out + row * n;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      dst[j] = static_cast<scalar_t>(math::rbf_entry(static_cast<double>(src[j]), gii, d[j], w));
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
    center_apply_kernel<scalar_t><<<row_blocks(B * n), kThreads, 0, stream>>>(
        k.data_ptr<scalar_t>(), r.data_ptr<double>(), s.data_ptr<double>(), B, n, unbiased, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rbf_apply_cuda(const at::Tensor& g_in, const at::Tensor& diag_in, const at::Tensor& inv_in) {
  check_rbf_args(g_in, diag_in, inv_in);
  const int64_t B = g_in.size(0), n = g_in.size(1);
  c10::cuda::CUDAGuard guard(g_in.device());
  at::Tensor g = g_in.contiguous();
  at::Tensor diag = diag_in.to(at::kDouble).contiguous();
  at::Tensor inv = inv_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(g);
  if (g.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mpruner_rbf_apply_cuda", [&] {
    rbf_apply_kernel<scalar_t><<<row_blocks(B * n), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), diag.data_ptr<double>(), inv.data_ptr<double>(), B, n, out.data_ptr<scalar_t>());
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

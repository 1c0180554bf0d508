// CUDA kernels for the Gram transforms (centering, RBF) and the multi-tensor
// feature centering; the per-element formulas are in mpruner/hsic_math.h and the
// row splits in mpruner/tiling.h, shared with the CPU.
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

// ---------------------------------------------------------------- feature centering
// Up to kChunk layers per launch, passed by value (no pointer table to copy over).
constexpr int kChunk = 64;
constexpr int kColThreads = 128;

struct FeatureChunk {
  const void* ptr[kChunk];
  int64_t row_stride[kChunk];
};

// Pass 1: partial column sums of S row splits, float64: partial[g][s][c].
template <typename scalar_t>
__global__ void column_sums_kernel(FeatureChunk fc, int64_t n, int64_t d, int64_t S, int64_t g0,
                                   double* __restrict__ partial) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, s = blockIdx.y, g = blockIdx.z;
  if (c >= d) return;
  int64_t r0, r1;
  tiling::split_rows(n, S, s, r0, r1);
  const scalar_t* x = static_cast<const scalar_t*>(fc.ptr[g]);
  const int64_t stride = fc.row_stride[g];
  double sum = 0.0;
  for (int64_t r = r0; r < r1; ++r) sum += static_cast<double>(x[r * stride + c]);
  partial[((g0 + g) * S + s) * d + c] = sum;
}

// Pass 2: each thread adds its column's S partials in order (deterministic), then
// writes x - mean for the rows of its split into the stacked output.
template <typename scalar_t>
__global__ void subtract_mean_kernel(FeatureChunk fc, int64_t n, int64_t d, int64_t S, int64_t g0,
                                     const double* __restrict__ partial, scalar_t* __restrict__ out) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, s = blockIdx.y, g = blockIdx.z;
  if (c >= d) return;
  double sum = 0.0;
  for (int64_t k = 0; k < S; ++k) sum += partial[((g0 + g) * S + k) * d + c];
  const double mean = sum * (1.0 / double(n));
  int64_t r0, r1;
  tiling::split_rows(n, S, s, r0, r1);
  const scalar_t* x = static_cast<const scalar_t*>(fc.ptr[g]);
  const int64_t stride = fc.row_stride[g];
  scalar_t* o = out + (g0 + g) * n * d;
  for (int64_t r = r0; r < r1; ++r) o[r * d + c] = static_cast<scalar_t>(static_cast<double>(x[r * stride + c]) - mean);
}

at::Tensor center_features_cuda(at::TensorList xs_in, at::ScalarType dtype) {
  check_center_features_args(xs_in, dtype);
  const int64_t G = xs_in.size(), n = xs_in[0].size(0), d = xs_in[0].size(1);
  c10::cuda::CUDAGuard guard(xs_in[0].device());
  std::vector<at::Tensor> xs;  // features contiguous along d (a view is kept as it is)
  xs.reserve(G);
  for (const auto& x : xs_in) xs.push_back(x.stride(1) == 1 ? x : x.contiguous());
  at::Tensor out = at::empty({G, n, d}, xs[0].options().dtype(dtype));
  if (out.numel() == 0) return out;
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(16, n / 64));  // row splits: enough blocks for small d
  at::Tensor partial = at::empty({G, S, d}, xs[0].options().dtype(at::kDouble));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "mpruner_center_features_cuda", [&] {
    for (int64_t g0 = 0; g0 < G; g0 += kChunk) {
      const int64_t count = std::min<int64_t>(kChunk, G - g0);
      FeatureChunk fc{};
      for (int64_t g = 0; g < count; ++g) {
        fc.ptr[g] = xs[g0 + g].data_ptr<scalar_t>();
        fc.row_stride[g] = xs[g0 + g].stride(0);
      }
      dim3 grid((d + kColThreads - 1) / kColThreads, S, count);
      column_sums_kernel<scalar_t><<<grid, kColThreads, 0, stream>>>(fc, n, d, S, g0, partial.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      subtract_mean_kernel<scalar_t><<<grid, kColThreads, 0, stream>>>(fc, n, d, S, g0, partial.data_ptr<double>(),
                                                                       out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_center_apply", &mpruner::center_apply_cuda);
  m.impl("_rbf_apply", &mpruner::rbf_apply_cuda);
  m.impl("_center_features", &mpruner::center_features_cuda);
}

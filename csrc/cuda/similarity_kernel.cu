// CUDA kernel for _cosine_sums. One thread block per token (grid-stride over tokens):
// its warps first take the K squared norms into shared memory, then the K(K+1)/2 pair
// dot products (lanes stride over the features, a warp shuffle reduces them in float64);
// lane 0 turns each into a cosine and an angular distance with the shared formulas of
// mpruner/similarity_math.h and adds them to the (K, K) float64 sums. The pair and
// token index math is in that header too, exercised by the CPU tests.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "mpruner/similarity_math.h"

namespace mpruner {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t>
__device__ double dot_lanes(const scalar_t* u, const scalar_t* v, int64_t D, int lane) {
  double s = 0.0;
  for (int64_t d = lane; d < D; d += kWarp) s += static_cast<double>(u[d]) * static_cast<double>(v[d]);
  return warp_sum(s);
}

// ptrs[k]: base of tensor k; strides[2k], strides[2k+1]: its batch and token strides.
template <typename scalar_t>
__global__ void cosine_sums_kernel(const int64_t* __restrict__ ptrs, const int64_t* __restrict__ strides,
                                   const int64_t* __restrict__ rows, int64_t N, int64_t T, int64_t D, int64_t K,
                                   double* __restrict__ cos_out, double* __restrict__ ang_out) {
  extern __shared__ double sq[];  // K squared norms of the current token
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  const int64_t P = sim::pair_count(K);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t row = rows[i];
    for (int64_t k = warp; k < K; k += warps) {
      const scalar_t* u = reinterpret_cast<const scalar_t*>(ptrs[k]) +
                          sim::token_offset(row, T, strides[2 * k], strides[2 * k + 1]);
      const double s = dot_lanes(u, u, D, lane);
      if (lane == 0) sq[k] = s;
    }
    __syncthreads();
    for (int64_t p = warp; p < P; p += warps) {
      int64_t a, b;
      sim::pair_at(p, K, &a, &b);
      const scalar_t* u = reinterpret_cast<const scalar_t*>(ptrs[a]) +
                          sim::token_offset(row, T, strides[2 * a], strides[2 * a + 1]);
      const scalar_t* v = reinterpret_cast<const scalar_t*>(ptrs[b]) +
                          sim::token_offset(row, T, strides[2 * b], strides[2 * b + 1]);
      const double dot = a == b ? sq[a] : dot_lanes(u, v, D, lane);
      if (lane == 0) {
        const double c = sim::cosine_from_dots(dot, sq[a], sq[b]);
        atomicAdd(cos_out + a * K + b, c);
        atomicAdd(ang_out + a * K + b, sim::angular_from_cosine(c));
      }
    }
    __syncthreads();  // sq is rewritten for the next token
  }
}

std::tuple<at::Tensor, at::Tensor> cosine_sums_cuda(at::TensorList hidden_in, const at::Tensor& rows_in) {
  TORCH_CHECK(!hidden_in.empty(), "mpruner._cosine_sums: hidden must hold at least one (B, T, D) tensor");
  const at::Tensor& h0 = hidden_in[0];
  TORCH_CHECK(h0.dim() == 3, "mpruner._cosine_sums: hidden[0] must be (B, T, D), got ", h0.sizes());
  const auto dtype = h0.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "mpruner._cosine_sums: hidden must be float32 or "
              "float64 (the Python wrapper converts half types), got ", dtype);
  TORCH_CHECK(rows_in.dim() == 1, "mpruner._cosine_sums: rows must be (N,) token indices into B*T, got ",
              rows_in.sizes());
  c10::cuda::CUDAGuard guard(h0.device());
  const int64_t K = static_cast<int64_t>(hidden_in.size());
  std::vector<at::Tensor> hidden;
  std::vector<int64_t> meta(3 * K);
  for (int64_t k = 0; k < K; ++k) {
    const at::Tensor& h = hidden_in[k];
    TORCH_CHECK(h.sizes() == h0.sizes(), "mpruner._cosine_sums: hidden[", k, "] has shape ", h.sizes(),
                " but hidden[0] has ", h0.sizes(), "; cosine compares vectors of one width on the same tokens");
    TORCH_CHECK(h.scalar_type() == dtype, "mpruner._cosine_sums: hidden[", k, "] is ", h.scalar_type(),
                " but hidden[0] is ", dtype, "; pass one dtype");
    check_same_device(h, rows_in, "a hidden state", "rows");
    hidden.push_back(h.stride(2) == 1 ? h : h.contiguous());
    meta[k] = reinterpret_cast<int64_t>(hidden.back().data_ptr());
    meta[K + 2 * k] = hidden.back().stride(0);
    meta[K + 2 * k + 1] = hidden.back().stride(1);
  }
  at::Tensor rows = rows_in.to(at::kLong).contiguous();
  const int64_t N = rows.size(0), B = h0.size(0), T = h0.size(1), D = h0.size(2);
  auto opts = rows.options().dtype(at::kDouble);
  at::Tensor cos_sum = at::zeros({K, K}, opts), ang_sum = at::zeros({K, K}, opts);
  if (N == 0 || D == 0) return {cos_sum, ang_sum};
  // Out-of-range rows would read outside the tensors: checked on the device, one sync.
  TORCH_CHECK(rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < B * T,
              "mpruner._cosine_sums: rows must be in [0, B*T=", B * T, ")");
  at::Tensor meta_dev = at::tensor(meta, at::TensorOptions().dtype(at::kLong)).to(h0.device(), /*non_blocking=*/false);
  const int blocks = static_cast<int>(std::min<int64_t>(N, 65535));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "mpruner_cosine_sums_cuda", [&] {
    cosine_sums_kernel<scalar_t><<<blocks, kThreads, K * sizeof(double), stream>>>(
        meta_dev.data_ptr<int64_t>(), meta_dev.data_ptr<int64_t>() + K, rows.data_ptr<int64_t>(), N, T, D, K,
        cos_sum.data_ptr<double>(), ang_sum.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The kernel fills the upper triangle; mirror it.
  cos_sum = cos_sum + cos_sum.triu(1).transpose(0, 1);
  ang_sum = ang_sum + ang_sum.triu(1).transpose(0, 1);
  return {cos_sum, ang_sum};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_cosine_sums", &mpruner::cosine_sums_cuda);
}

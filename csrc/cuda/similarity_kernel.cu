// CUDA kernel for _cosine_sums. Thread block g takes a contiguous run of the selected tokens
// (tiling::split_rows over sim::token_blocks(N, P) blocks, a function of N and P only). For each
// token it stages the K vectors in shared memory, a slice of sim::stage_width features at a time
// (each vector is read from global memory once, not once per pair); groups of
// sim::lanes_per_pair lanes take the K(K+1)/2 pair dot products from there (float64, a fixed
// shuffle order), the squared norms being the diagonal pairs. Cosine and angular distance come
// from the shared formulas of mpruner/similarity_math.h; each block adds them to its own partial
// sums, and a second kernel adds the blocks' sums in block order and writes both triangles:
// no atomics, so the result is bitwise the same run to run. One device read per call: the
// range check of the token indices (aminmax).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "mpruner/similarity_math.h"
#include "mpruner/tiling.h"

namespace mpruner {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTensors = 128;             // passed by value: no table to copy to the device
constexpr int64_t kStageBytes = 32 * 1024;   // staged features of one token, all K vectors

struct HiddenTable {
  const void* ptr[kMaxTensors];
  int64_t batch_stride[kMaxTensors];
  int64_t token_stride[kMaxTensors];
};

// partial[g][0][p], partial[g][1][p]: block g's sums of cos and arccos/pi for pair p.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cosine_partials_kernel(HiddenTable tab, const int64_t* __restrict__ rows, int64_t N, int64_t T, int64_t D,
                           int K, int64_t width, int lanes, double* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* dots = reinterpret_cast<double*>(smem_raw);                       // [P]
  scalar_t* stage = reinterpret_cast<scalar_t*>(dots + sim::pair_count(K));  // [K][width]
  const int64_t P = sim::pair_count(K);
  const int groups = kThreads / lanes, gi = threadIdx.x / lanes, sub = threadIdx.x % lanes;
  int64_t i0, i1;
  tiling::split_rows(N, gridDim.x, blockIdx.x, i0, i1);
  double* cos_part = partial + int64_t(blockIdx.x) * 2 * P;
  double* ang_part = cos_part + P;
  for (int64_t p = threadIdx.x; p < P; p += kThreads) cos_part[p] = ang_part[p] = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t row = rows[i];
    for (int64_t p = threadIdx.x; p < P; p += kThreads) dots[p] = 0.0;
    for (int64_t d0 = 0; d0 < D; d0 += width) {
      const int64_t w = D - d0 < width ? D - d0 : width;
      __syncthreads();  // the previous slice (or token) is done with stage and dots
      for (int64_t e = threadIdx.x; e < K * w; e += kThreads) {
        const int64_t k = e / w, d = e % w;
        const scalar_t* src = static_cast<const scalar_t*>(tab.ptr[k]) +
                              sim::token_offset(row, T, tab.batch_stride[k], tab.token_stride[k]);
        stage[k * width + d] = src[d0 + d];
      }
      __syncthreads();
      // Uniform trip count across the warp (its lanes' groups may hold different pairs).
      for (int64_t p0 = 0; p0 < P; p0 += groups) {
        const int64_t p = p0 + gi;
        double s = 0.0;
        if (p < P) {
          int64_t a, b;
          sim::pair_at(p, K, &a, &b);
          const scalar_t* u = stage + a * width;
          const scalar_t* v = stage + b * width;
          for (int64_t d = sub; d < w; d += lanes) s += static_cast<double>(u[d]) * static_cast<double>(v[d]);
        }
        for (int off = lanes / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off, lanes);
        if (p < P && sub == 0) dots[p] += s;
      }
    }
    __syncthreads();  // every pair's dot (the norms included) is in
    for (int64_t p = threadIdx.x; p < P; p += kThreads) {
      int64_t a, b;
      sim::pair_at(p, K, &a, &b);
      const double c = sim::cosine_from_dots(dots[p], dots[a * K - a * (a - 1) / 2], dots[b * K - b * (b - 1) / 2]);
      cos_part[p] += c;
      ang_part[p] += sim::angular_from_cosine(c);
    }
    __syncthreads();  // the norms are read above before the next token clears dots
  }
}

// out[a, b] = out[b, a] = the blocks' sums added in block order.
__global__ void cosine_reduce_kernel(const double* __restrict__ partial, int64_t G, int K, double* __restrict__ cos_out,
                                     double* __restrict__ ang_out) {
  const int64_t P = sim::pair_count(K);
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P; p += int64_t(blockDim.x) * gridDim.x) {
    double c = 0.0, g = 0.0;
    for (int64_t blk = 0; blk < G; ++blk) {
      c += partial[blk * 2 * P + p];
      g += partial[blk * 2 * P + P + p];
    }
    int64_t a, b;
    sim::pair_at(p, K, &a, &b);
    cos_out[a * K + b] = cos_out[b * K + a] = c;
    ang_out[a * K + b] = ang_out[b * K + a] = g;
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
  const int64_t K = static_cast<int64_t>(hidden_in.size());
  TORCH_CHECK(K <= kMaxTensors, "mpruner._cosine_sums: the CUDA kernel takes at most ", kMaxTensors,
              " hidden-state tensors per call, got ", K, "; compare the layers in groups");
  c10::cuda::CUDAGuard guard(h0.device());
  std::vector<at::Tensor> hidden;
  HiddenTable tab{};
  for (int64_t k = 0; k < K; ++k) {
    const at::Tensor& h = hidden_in[k];
    TORCH_CHECK(h.sizes() == h0.sizes(), "mpruner._cosine_sums: hidden[", k, "] has shape ", h.sizes(),
                " but hidden[0] has ", h0.sizes(), "; cosine compares vectors of one width on the same tokens");
    TORCH_CHECK(h.scalar_type() == dtype, "mpruner._cosine_sums: hidden[", k, "] is ", h.scalar_type(),
                " but hidden[0] is ", dtype, "; pass one dtype");
    check_same_device(h, rows_in, "a hidden state", "rows");
    hidden.push_back(h.stride(2) == 1 ? h : h.contiguous());
    tab.ptr[k] = hidden.back().data_ptr();
    tab.batch_stride[k] = hidden.back().stride(0);
    tab.token_stride[k] = hidden.back().stride(1);
  }
  at::Tensor rows = rows_in.to(at::kLong).contiguous();
  const int64_t N = rows.size(0), B = h0.size(0), T = h0.size(1), D = h0.size(2);
  auto opts = rows.options().dtype(at::kDouble);
  if (N == 0 || D == 0) return {at::zeros({K, K}, opts), at::zeros({K, K}, opts)};
  // Out-of-range rows would read outside the tensors: one device read for both bounds.
  auto bounds = at::aminmax(rows);
  at::Tensor range = at::stack({std::get<0>(bounds), std::get<1>(bounds)}).cpu();
  const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < B * T, "mpruner._cosine_sums: rows must be in [0, B*T=", B * T, "), got [", lo, ", ",
              hi, "]");
  const int64_t P = sim::pair_count(K), G = sim::token_blocks(N, P);
  const int lanes = sim::lanes_per_pair(P, kThreads);
  at::Tensor partial = at::empty({G, 2, P}, opts);
  at::Tensor cos_sum = at::empty({K, K}, opts), ang_sum = at::empty({K, K}, opts);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "mpruner_cosine_sums_cuda", [&] {
    const int64_t width = sim::stage_width(K, D, kStageBytes, sizeof(scalar_t));
    const size_t smem = static_cast<size_t>(P * sizeof(double) + K * width * sizeof(scalar_t));
    auto kernel = cosine_partials_kernel<scalar_t>;
    if (smem > 48 * 1024) {
      const int64_t optin = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
      TORCH_CHECK(static_cast<int64_t>(smem) <= optin, "mpruner._cosine_sums: ", K, " tensors need ", smem,
                  " bytes of shared memory per block, the device has ", optin, "; compare the layers in groups");
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    kernel<<<static_cast<unsigned>(G), kThreads, smem, stream>>>(tab, rows.data_ptr<int64_t>(), N, T, D,
                                                                 static_cast<int>(K), width, lanes,
                                                                 partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int blocks = static_cast<int>(std::min<int64_t>((P + 255) / 256, 1024));
  cosine_reduce_kernel<<<blocks, 256, 0, stream>>>(partial.data_ptr<double>(), G, static_cast<int>(K),
                                                   cos_sum.data_ptr<double>(), ang_sum.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {cos_sum, ang_sum};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_cosine_sums", &mpruner::cosine_sums_cuda);
}

// CUDA kernel for _hsic_partials. The arithmetic is in mpruner/hsic_math.h (shared
// with the CPU kernel, which the CPU tests exercise); this file only arranges
// tiles, threads and memory.
//
// Geometry: one block per 32x32 tile of the upper triangle (x), per sequence (y),
// per group of up to 2048 layer pairs (z). For each tile row the block stages the
// 32 Gram values of every layer in shared memory; each thread then adds the
// products of its layer pairs in float64. Row sums come out of the same pass: warp
// reductions for the tile row, registers for the tile columns (symmetry).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"

namespace mpruner {
namespace {

constexpr int kTile = 32;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPairsPerThread = 8;
constexpr int kPairsPerGroup = kThreads * kPairsPerThread;
constexpr int kMaxLayers = 256;
constexpr int kMaxGridY = 65535;

// Tile t of the upper triangle, counted row by row: (I, J) with I <= J.
__device__ __forceinline__ void tile_coords(int t, int nt, int& I, int& J) {
  int i = 0;
  while (t >= nt - i) {
    t -= nt - i;
    ++i;
  }
  I = i;
  J = i + t;
}

// Layer pair p, counted row by row: (a, b) with a <= b.
__device__ __forceinline__ void pair_coords(int p, int L, int& a, int& b) {
  int i = 0;
  while (p >= L - i) {
    p -= L - i;
    ++i;
  }
  a = i;
  b = i + p;
}

template <typename scalar_t, int MAXK>
__global__ void __launch_bounds__(kThreads)
    hsic_partials_kernel(const scalar_t* __restrict__ grams, const int64_t* __restrict__ lengths, int L, int B,
                         int T, int b0, bool unbiased, double* __restrict__ pairs, double* __restrict__ rowsums) {
  extern __shared__ unsigned char smem_raw[];
  scalar_t* vals = reinterpret_cast<scalar_t*>(smem_raw);  // [L][kTile + 1]; +1 avoids bank conflicts
  constexpr int stride = kTile + 1;
  const int nt = (T + kTile - 1) / kTile;
  int I, J;
  tile_coords(blockIdx.x, nt, I, J);
  const int b = b0 + blockIdx.y;
  // Lengths are not checked on the host (that would synchronise): clamp instead.
  const int n = static_cast<int>(min(max(lengths[b], int64_t(0)), int64_t(T)));
  if (J * kTile >= n) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool with_sums = blockIdx.z == 0;
  const int P = L * (L + 1) / 2;

  int pa[kPairsPerThread], pb[kPairsPerThread];
  double acc[kPairsPerThread];
#pragma unroll
  for (int k = 0; k < kPairsPerThread; ++k) {
    const int p = blockIdx.z * kPairsPerGroup + threadIdx.x + k * kThreads;
    pa[k] = -1;
    pb[k] = 0;
    acc[k] = 0.0;
    if (p < P) pair_coords(p, L, pa[k], pb[k]);
  }
  double colacc[MAXK];
#pragma unroll
  for (int k = 0; k < MAXK; ++k) colacc[k] = 0.0;

  const int j = J * kTile + lane;
  const int64_t mat = static_cast<int64_t>(T) * T;
  for (int ii = 0; ii < kTile; ++ii) {
    const int i = I * kTile + ii;
    if (i >= n) break;  // uniform across the block
#pragma unroll
    for (int k = 0; k < MAXK; ++k) {
      const int l = warp + k * kWarps;  // uniform across the warp
      if (l < L) {
        double v = 0.0;
        if (j < n && j >= i && math::entry_counts(i, j, unbiased))
          v = static_cast<double>(grams[(static_cast<int64_t>(l) * B + b) * mat + static_cast<int64_t>(i) * T + j]);
        vals[l * stride + lane] = static_cast<scalar_t>(v);
        if (with_sums) {
          double s = v;
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
          if (lane == 0 && s != 0.0) atomicAdd(&rowsums[(static_cast<int64_t>(b) * L + l) * T + i], s);
          if (j > i) colacc[k] += v;  // symmetry: K_ij also belongs to row j
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPairsPerThread; ++k) {
      if (pa[k] >= 0) {
        const scalar_t* va = vals + pa[k] * stride;
        const scalar_t* vb = vals + pb[k] * stride;
        double s = 0.0;
#pragma unroll 8
        for (int jj = 0; jj < kTile; ++jj) s += static_cast<double>(va[jj]) * static_cast<double>(vb[jj]);
        // Entries off the diagonal stand for (i, j) and (j, i): weight 2, the diagonal 1.
        const double diag = (I == J) ? static_cast<double>(va[ii]) * static_cast<double>(vb[ii]) : 0.0;
        acc[k] += math::triangle_weight(0, 1) * s - (math::triangle_weight(0, 1) - math::triangle_weight(0, 0)) * diag;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < kPairsPerThread; ++k)
    if (pa[k] >= 0 && acc[k] != 0.0)
      atomicAdd(&pairs[(static_cast<int64_t>(b) * L + pa[k]) * L + pb[k]], acc[k]);
  if (with_sums && j < n) {
#pragma unroll
    for (int k = 0; k < MAXK; ++k) {
      const int l = warp + k * kWarps;
      if (l < L && colacc[k] != 0.0) atomicAdd(&rowsums[(static_cast<int64_t>(b) * L + l) * T + j], colacc[k]);
    }
  }
}

template <typename scalar_t, int MAXK>
void launch(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased, at::Tensor& pairs,
            at::Tensor& rowsums) {
  const int L = grams.size(0), B = grams.size(1), T = grams.size(2);
  const int nt = (T + kTile - 1) / kTile;
  const int tiles = nt * (nt + 1) / 2;
  const int groups = (L * (L + 1) / 2 + kPairsPerGroup - 1) / kPairsPerGroup;
  const size_t smem = static_cast<size_t>(L) * (kTile + 1) * sizeof(scalar_t);
  auto kernel = hsic_partials_kernel<scalar_t, MAXK>;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int b0 = 0; b0 < B; b0 += kMaxGridY) {
    dim3 grid(tiles, std::min(kMaxGridY, B - b0), groups);
    kernel<<<grid, kThreads, smem, stream>>>(grams.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), L, B, T, b0,
                                             unbiased, pairs.data_ptr<double>(), rowsums.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> hsic_partials_cuda(const at::Tensor& grams_in, const at::Tensor& lengths_in,
                                                      bool unbiased) {
  check_partials_args(grams_in, lengths_in);
  const int64_t L = grams_in.size(0), B = grams_in.size(1), T = grams_in.size(2);
  TORCH_CHECK(L <= kMaxLayers, "mpruner._hsic_partials: the CUDA kernel takes at most ", kMaxLayers,
              " layers per call, got ", L, "; split the layers into groups");
  TORCH_CHECK(T < (1 << 20), "mpruner._hsic_partials: n=", T, " is too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(grams_in.device());
  at::Tensor grams = grams_in.contiguous();
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  auto opts = grams.options().dtype(at::kDouble);
  at::Tensor pairs = at::zeros({B, L, L}, opts);
  at::Tensor rowsums = at::zeros({B, L, T}, opts);
  if (grams.numel() == 0) return {pairs, rowsums};
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "mpruner_hsic_partials_cuda", [&] {
    const int64_t warps_per_layer_slot = (L + kWarps - 1) / kWarps;
    if (warps_per_layer_slot <= 2) {
      launch<scalar_t, 2>(grams, lengths, unbiased, pairs, rowsums);
    } else if (warps_per_layer_slot <= 8) {
      launch<scalar_t, 8>(grams, lengths, unbiased, pairs, rowsums);
    } else {
      launch<scalar_t, kMaxLayers / kWarps>(grams, lengths, unbiased, pairs, rowsums);
    }
  });
  pairs = at::triu(pairs) + at::triu(pairs, 1).transpose(1, 2);
  return {pairs, rowsums};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_hsic_partials", &mpruner::hsic_partials_cuda);
}

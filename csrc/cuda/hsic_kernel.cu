// CUDA kernels for _hsic_partials. The arithmetic is in mpruner/hsic_math.h and the
// index math in mpruner/tiling.h (both shared with the CPU, whose tests exercise
// them); this file only arranges threads and memory.
//
// Pass 1 (partials_kernel): one block per 32x32 tile of the upper triangle (x), per
// sequence (y), per group of layer-pair chunks (z). For each tile row the block
// stages the 32 Gram values of every layer in shared memory, converted to float64
// once. Each thread owns a chunk of up to R pairs (a, b0..b0+R-1) of one row a: it
// reads layer a's value once per column for R fused multiply-adds. Row sums come
// from the same pass (warp sums for the tile rows; shared-memory column sums for
// the symmetric half). Every block writes its sums to its own slots: no atomics.
// Pass 2 (reduce kernels): adds the slots in a fixed order (bitwise reproducible)
// and writes both triangles of the pair matrix, so no zero-fill or mirroring follows.
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

using tiling::kTile;
constexpr int kThreads = tiling::kHsicThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 256;
constexpr int kMaxGridY = 65535;
constexpr int kStride = kTile + 1;  // +1 double per layer row: fewer bank conflicts

template <typename scalar_t, int R>
__global__ void __launch_bounds__(kThreads)
    partials_kernel(const scalar_t* __restrict__ grams, const int64_t* __restrict__ lengths, int L, int B, int T,
                    int b0, bool unbiased, double* __restrict__ pair_part, double* __restrict__ row_part) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* vals = reinterpret_cast<double*>(smem_raw);  // [L][kStride]: the tile row, float64
  double* colsum = vals + L * kStride;                  // [L][kTile]: column sums (symmetric half)
  const int64_t nt = tiling::num_tiles(T);
  const int64_t tiles = nt * (nt + 1) / 2;
  int64_t I, J;
  tiling::triangle_coords(blockIdx.x, nt, I, J);
  const int b = b0 + blockIdx.y;
  const int n = static_cast<int>(lengths[b]);  // validated on the host (composite.cpp)
  if (J * kTile >= n) return;                  // the reduction never reads this tile
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool with_sums = blockIdx.z == 0;
  const int P = L * (L + 1) / 2;

  int a, bb, count;
  tiling::chunk_coords(int64_t(blockIdx.z) * kThreads + threadIdx.x, L, R, a, bb, count);
  double acc[R];
#pragma unroll
  for (int k = 0; k < R; ++k) acc[k] = 0.0;
  if (with_sums)
    for (int k = threadIdx.x; k < L * kTile; k += kThreads) colsum[k] = 0.0;
  __syncthreads();

  const int j = static_cast<int>(J) * kTile + lane;
  const int64_t mat = static_cast<int64_t>(T) * T;
  for (int ii = 0; ii < kTile; ++ii) {
    const int i = static_cast<int>(I) * kTile + ii;
    if (i >= n) break;  // uniform across the block
    for (int l = warp; l < L; l += kWarps) {  // uniform across the warp
      double v = 0.0;
      if (j < n && j >= i && math::entry_counts(i, j, unbiased))
        v = static_cast<double>(grams[(static_cast<int64_t>(l) * B + b) * mat + static_cast<int64_t>(i) * T + j]);
      vals[l * kStride + lane] = v;
      if (with_sums) {
        double s = v;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
        if (lane == 0) row_part[tiling::rowpart_slot(b, blockIdx.x, 0, l, ii, tiles, L)] = s;
        if (j > i) colsum[l * kTile + lane] += v;  // K_ij also belongs to row j; one owner per slot
      }
    }
    __syncthreads();
    if (count > 0) {
      const double* va = vals + a * kStride;
      // Entries off the diagonal stand for (i, j) and (j, i): weight 2; the diagonal 1.
      const bool diag_tile = I == J;
#pragma unroll 4
      for (int jj = 0; jj < kTile; ++jj) {
        const double x = va[jj] * (diag_tile && jj == ii ? math::triangle_weight(0, 0) : math::triangle_weight(0, 1));
#pragma unroll
        for (int k = 0; k < R; ++k)
          if (k < count) acc[k] = fma(x, vals[(bb + k) * kStride + jj], acc[k]);
      }
    }
    __syncthreads();
  }
  if (count > 0) {
    double* out = pair_part + (static_cast<int64_t>(b) * tiles + blockIdx.x) * P;
#pragma unroll
    for (int k = 0; k < R; ++k)
      if (k < count) out[tiling::triangle_index(a, bb + k, L)] = acc[k];
  }
  if (with_sums)
    for (int l = warp; l < L; l += kWarps)
      row_part[tiling::rowpart_slot(b, blockIdx.x, 1, l, lane, tiles, L)] = colsum[l * kTile + lane];
}

// pairs[b, a, c] = pairs[b, c, a] = the sum over the sequence's valid tiles. One block
// per (sequence, 32 pairs): lane = pair, warp w adds the valid tiles k = w, w + 16, ...
// (independent loads, many in flight), then warp 0 adds the 16 warp sums in order:
// a fixed order, so the same inputs give bitwise the same result.
constexpr int kReduceWarps = 16;

__global__ void __launch_bounds__(kReduceWarps * 32)
    reduce_pairs_kernel(const double* __restrict__ pair_part, const int64_t* __restrict__ lengths, int L, int T,
                        double* __restrict__ pairs) {
  __shared__ double warp_sums[kReduceWarps][32];
  const int P = L * (L + 1) / 2, chunks = (P + 31) / 32;
  const int64_t b = blockIdx.x / chunks, p = int64_t(blockIdx.x % chunks) * 32 + threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2;
  const int64_t nv = tiling::num_tiles(lengths[b]), valid = nv * (nv + 1) / 2;
  double s = 0.0;
  if (p < P) {
#pragma unroll 4
    for (int64_t k = warp; k < valid; k += kReduceWarps) {
      int64_t I, J;
      tiling::triangle_coords(k, nv, I, J);
      s += pair_part[(b * tiles + tiling::triangle_index(I, J, nt)) * P + p];
    }
  }
  warp_sums[warp][threadIdx.x % 32] = s;
  __syncthreads();
  if (warp == 0 && p < P) {
    double total = 0.0;
    for (int w = 0; w < kReduceWarps; ++w) total += warp_sums[w][threadIdx.x];
    int64_t a, c;
    tiling::triangle_coords(p, L, a, c);
    pairs[(b * L + a) * L + c] = total;
    pairs[(b * L + c) * L + a] = total;
  }
}

// rowsums[b, l, i]: the fixed-order sum of tiling::reduce_row; 0 past the length.
__global__ void reduce_rows_kernel(const double* __restrict__ row_part, const int64_t* __restrict__ lengths, int L,
                                   int B, int T, double* __restrict__ rowsums) {
  const int64_t nt = tiling::num_tiles(T);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < int64_t(B) * L * T;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t i = idx % T, l = (idx / T) % L, b = idx / (int64_t(T) * L);
    const int64_t n = lengths[b];
    rowsums[idx] = i < n ? tiling::reduce_row(b, l, i, tiling::num_tiles(n), nt, L,
                                              [&](int64_t k) { return row_part[k]; })
                         : 0.0;
  }
}

int64_t blocks_for(int64_t count, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((count + threads - 1) / threads, 65535 * 8));
}

template <typename scalar_t, int R>
void launch(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased, at::Tensor& pair_part,
            at::Tensor& row_part) {
  const int L = grams.size(0), B = grams.size(1), T = grams.size(2);
  const int64_t nt = tiling::num_tiles(T);
  const int64_t tiles = nt * (nt + 1) / 2;
  const int64_t groups = tiling::pair_groups(L);
  const size_t smem = static_cast<size_t>(L) * (kStride + kTile) * sizeof(double);
  auto kernel = partials_kernel<scalar_t, R>;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int b0 = 0; b0 < B; b0 += kMaxGridY) {
    dim3 grid(tiles, std::min(kMaxGridY, B - b0), groups);
    kernel<<<grid, kThreads, smem, stream>>>(grams.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), L, B, T, b0,
                                             unbiased, pair_part.data_ptr<double>(), row_part.data_ptr<double>());
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
  if (grams.numel() == 0) return {at::zeros({B, L, L}, opts), at::zeros({B, L, T}, opts)};
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2, P = L * (L + 1) / 2;
  // Per-tile slots (about (L/2 + 64)/1024 of the Grams' float32 bytes), written before read.
  at::Tensor pair_part = at::empty({B, tiles, P}, opts);
  at::Tensor row_part = at::empty({B, tiles, 2, L, kTile}, opts);
  at::Tensor pairs = at::empty({B, L, L}, opts);
  at::Tensor rowsums = at::empty({B, L, T}, opts);
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "mpruner_hsic_partials_cuda", [&] {
    switch (tiling::pairs_per_thread(L)) {
      case 1: launch<scalar_t, 1>(grams, lengths, unbiased, pair_part, row_part); break;
      case 2: launch<scalar_t, 2>(grams, lengths, unbiased, pair_part, row_part); break;
      case 4: launch<scalar_t, 4>(grams, lengths, unbiased, pair_part, row_part); break;
      case 8: launch<scalar_t, 8>(grams, lengths, unbiased, pair_part, row_part); break;
      default: launch<scalar_t, 16>(grams, lengths, unbiased, pair_part, row_part); break;
    }
  });
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  reduce_pairs_kernel<<<B * ((P + 31) / 32), kReduceWarps * 32, 0, stream>>>(
      pair_part.data_ptr<double>(), lengths.data_ptr<int64_t>(), L, T, pairs.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  reduce_rows_kernel<<<blocks_for(B * L * T, 256), 256, 0, stream>>>(
      row_part.data_ptr<double>(), lengths.data_ptr<int64_t>(), L, B, T, rowsums.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {pairs, rowsums};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_hsic_partials", &mpruner::hsic_partials_cuda);
}

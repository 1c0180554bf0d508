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
//
// More layers than one block's shared memory stages (the device's opt-in limit, about 446 on
// sm_90) go in layer blocks (tiling.h): grid z runs over block pairs and pair groups.
// MPRUNER_HSIC_KERNEL=blocked selects the register-blocked pass 1 (hsic_blocked_kernel.cu),
// to be compared on a GPU (benchmarks/bench_cuda_variants.py) before it becomes the default.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"
#include "mpruner/tiling.h"
#include "hsic_partials.cuh"

#include <cstdlib>
#include <cstring>

namespace mpruner {
namespace {

using tiling::kTile;
constexpr int kThreads = tiling::kHsicThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGridY = 65535;
constexpr int kStride = kTile + 1;  // +1 double per layer row: fewer bank conflicts
constexpr int64_t kBytesPerLayer = (kStride + kTile) * sizeof(double);  // a staged row + column sums

// Block (tile x, sequence y, z = layer block pair * groups + pair group).
template <typename scalar_t, int R>
__global__ void __launch_bounds__(kThreads)
    partials_kernel(const scalar_t* __restrict__ grams, const int64_t* __restrict__ lengths, int L, int B, int T,
                    int b0, int Lb, int groups, bool unbiased, double* __restrict__ pair_part,
                    double* __restrict__ row_part) {
  const int64_t nb = tiling::layer_blocks(L, Lb);
  int64_t X, Y;
  tiling::triangle_coords(blockIdx.z / groups, nb, X, Y);
  const int64_t group = blockIdx.z % groups;
  const bool same = X == Y;
  const int nx = static_cast<int>(tiling::block_layers(X, L, Lb));
  const int S = static_cast<int>(tiling::staged_count(X, Y, L, Lb));
  extern __shared__ __align__(16) unsigned char smem_raw[];
  double* vals = reinterpret_cast<double*>(smem_raw);  // [S][kStride]: the tile row, float64
  double* colsum = vals + S * kStride;                  // [nx][kTile]: column sums (symmetric half)
  const int64_t nt = tiling::num_tiles(T);
  const int64_t tiles = nt * (nt + 1) / 2;
  int64_t I, J;
  tiling::triangle_coords(blockIdx.x, nt, I, J);
  const int b = b0 + blockIdx.y;
  const int n = static_cast<int>(tiling::sequence_length(lengths, b, T));  // checked on the host
  if (J * kTile >= n) return;  // the reduction never reads this tile
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool with_sums = same && group == 0;  // each layer's row sums come from one block
  const int P = L * (L + 1) / 2;

  int a, bb, count;
  tiling::chunk_coords(group * kThreads + threadIdx.x, nx, S, same, R, a, bb, count);
  double acc[R];
#pragma unroll
  for (int k = 0; k < R; ++k) acc[k] = 0.0;
  if (with_sums)
    for (int k = threadIdx.x; k < nx * kTile; k += kThreads) colsum[k] = 0.0;
  __syncthreads();

  const int j = static_cast<int>(J) * kTile + lane;
  const int64_t mat = static_cast<int64_t>(T) * T;
  for (int ii = 0; ii < kTile; ++ii) {
    const int i = static_cast<int>(I) * kTile + ii;
    if (i >= n) break;  // uniform across the block
    for (int s = warp; s < S; s += kWarps) {  // uniform across the warp
      const int64_t l = tiling::staged_layer(s, X, Y, L, Lb);
      double v = 0.0;
      if (j < n && j >= i && math::entry_counts(i, j, unbiased))
        v = static_cast<double>(grams[(l * B + b) * mat + static_cast<int64_t>(i) * T + j]);
      vals[s * kStride + lane] = v;
      if (with_sums) {  // on the diagonal block pair every staged layer is one of X's
        double sum = v;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, off);
        if (lane == 0) row_part[tiling::rowpart_slot(b, blockIdx.x, 0, l, ii, tiles, L)] = sum;
        if (j > i) colsum[s * kTile + lane] += v;  // K_ij also belongs to row j; one owner per slot
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
    const int64_t ga = tiling::staged_layer(a, X, Y, L, Lb);
#pragma unroll
    for (int k = 0; k < R; ++k)
      if (k < count) out[tiling::triangle_index(ga, tiling::staged_layer(bb + k, X, Y, L, Lb), L)] = acc[k];
  }
  if (with_sums)
    for (int s = warp; s < nx; s += kWarps)
      row_part[tiling::rowpart_slot(b, blockIdx.x, 1, tiling::staged_layer(s, X, Y, L, Lb), lane, tiles, L)] =
          colsum[s * kTile + lane];
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
  const int64_t nv = tiling::num_tiles(tiling::sequence_length(lengths, b, T)), valid = nv * (nv + 1) / 2;
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
    const int64_t n = tiling::sequence_length(lengths, b, T);
    rowsums[idx] = i < n ? tiling::reduce_row(b, l, i, tiling::num_tiles(n), nt, L,
                                              [&](int64_t k) { return row_part[k]; })
                         : 0.0;
  }
}

int64_t blocks_for(int64_t count, int threads) {
  return std::max<int64_t>(1, std::min<int64_t>((count + threads - 1) / threads, 65535 * 8));
}

template <typename scalar_t, int R>
void launch_tiled(const gpu::PartialsLaunch& args, int64_t Lb) {
  const at::Tensor& grams = args.grams;
  const int L = grams.size(0), B = grams.size(1), T = grams.size(2);
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2;
  const int64_t nb = tiling::layer_blocks(L, Lb), groups = tiling::pair_groups(L, Lb);
  const int64_t z = nb * (nb + 1) / 2 * groups;
  TORCH_CHECK(z <= 65535, "mpruner._hsic_partials: ", L, " layers need ", z, " thread-block layers (at most 65535)");
  const int64_t S = L <= Lb ? L : 2 * Lb;
  const size_t smem = static_cast<size_t>(S * kStride + Lb * kTile) * sizeof(double);
  auto kernel = partials_kernel<scalar_t, R>;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (int b0 = 0; b0 < B; b0 += kMaxGridY) {
    dim3 grid(tiles, std::min(kMaxGridY, B - b0), z);
    kernel<<<grid, kThreads, smem, stream>>>(grams.data_ptr<scalar_t>(), args.lengths, L, B, T, b0,
                                             static_cast<int>(Lb), static_cast<int>(groups), args.unbiased,
                                             args.pair_part, args.row_part);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// MPRUNER_HSIC_KERNEL: "tiled" (default) or "blocked"; read per call (a benchmark switch).
bool blocked_kernel_selected() {
  const char* v = std::getenv("MPRUNER_HSIC_KERNEL");
  if (v == nullptr || *v == 0 || std::strcmp(v, "tiled") == 0) return false;
  TORCH_CHECK(std::strcmp(v, "blocked") == 0, "mpruner: MPRUNER_HSIC_KERNEL must be 'tiled' or 'blocked', got '", v, "'");
  return true;
}

std::tuple<at::Tensor, at::Tensor> hsic_partials_cuda(const at::Tensor& grams_in,
                                                      const std::optional<at::Tensor>& lengths_in, bool unbiased) {
  check_partials_args(grams_in, lengths_in);  // lengths within [0, T]: the kernels index by them
  const int64_t L = grams_in.size(0), B = grams_in.size(1), T = grams_in.size(2);
  TORCH_CHECK(T < (1 << 20), "mpruner._hsic_partials: n=", T, " is too large for the CUDA kernel");
  c10::cuda::CUDAGuard guard(grams_in.device());
  at::Tensor grams = grams_in.contiguous();
  at::Tensor lengths;
  if (lengths_in.has_value()) lengths = lengths_in->to(at::kLong).contiguous();
  auto opts = grams.options().dtype(at::kDouble);
  if (grams.numel() == 0) return {at::zeros({B, L, L}, opts), at::zeros({B, L, T}, opts)};
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2, P = L * (L + 1) / 2;
  // Per-tile slots (about (L/2 + 64)/1024 of the Grams' float32 bytes), written before read.
  at::Tensor pair_part = at::empty({B, tiles, P}, opts);
  at::Tensor row_part = at::empty({B, tiles, 2, L, kTile}, opts);
  at::Tensor pairs = at::empty({B, L, L}, opts);
  at::Tensor rowsums = at::empty({B, L, T}, opts);
  const int64_t* len = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  int64_t optin = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  // MPRUNER_HSIC_SHARED_BYTES: a smaller budget, so that tests reach the layer blocks with few layers.
  if (const char* cap = std::getenv("MPRUNER_HSIC_SHARED_BYTES")) optin = std::min<int64_t>(optin, std::atoll(cap));
  const gpu::PartialsLaunch args{grams, len, unbiased, pair_part.data_ptr<double>(), row_part.data_ptr<double>(),
                                  optin};
  if (blocked_kernel_selected()) {
    gpu::launch_blocked_partials(args);
  } else {
    // The layers one block stages, from the device's shared memory; more go in layer blocks.
    const int64_t cap = tiling::layers_per_block(optin, kBytesPerLayer);
    TORCH_CHECK(cap >= 2, "mpruner._hsic_partials: the device's shared memory (", optin, " bytes) holds too few layers");
    const int64_t Lb = tiling::layer_block_size(L, cap);
    AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "mpruner_hsic_partials_cuda", [&] {
      switch (tiling::pairs_per_thread(L, Lb)) {
        case 1: launch_tiled<scalar_t, 1>(args, Lb); break;
        case 2: launch_tiled<scalar_t, 2>(args, Lb); break;
        case 4: launch_tiled<scalar_t, 4>(args, Lb); break;
        case 8: launch_tiled<scalar_t, 8>(args, Lb); break;
        default: launch_tiled<scalar_t, 16>(args, Lb); break;
      }
    });
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  reduce_pairs_kernel<<<B * ((P + 31) / 32), kReduceWarps * 32, 0, stream>>>(pair_part.data_ptr<double>(), len, L, T,
                                                                             pairs.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  reduce_rows_kernel<<<blocks_for(B * L * T, 256), 256, 0, stream>>>(row_part.data_ptr<double>(), len, L, B, T,
                                                                     rowsums.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {pairs, rowsums};
}

// ---------------------------------------------------------------- the fused epilogue
// _hsic_finish in one launch: every block computes the L totals and self-HSIC values (L x n
// work: the skip decision needs them all), then its grid-stride share of the pairs, each pair
// owned by one thread (no atomics). Block 0 keeps the flags and the thresholds.
__global__ void hsic_finish_kernel(const double* __restrict__ pairs, const double* __restrict__ rowsums, int L,
                                   int64_t T, int64_t n, bool unbiased, const double* __restrict__ scale,
                                   double thr_factor, const int64_t* __restrict__ index, bool skip,
                                   double* __restrict__ sums, double* __restrict__ thr_sums, int64_t* __restrict__ flags) {
  extern __shared__ double shared[];
  double* total = shared;     // [L]
  double* self = shared + L;  // [L]
  __shared__ int any_bad;
  for (int a = threadIdx.x; a < L; a += blockDim.x) {
    const double* r = rowsums + a * T;
    double s = 0.0, rr = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      s += r[i];
      rr = fma(r[i], r[i], rr);
    }
    total[a] = s;
    self[a] = math::hsic_from_sums(pairs[int64_t(a) * L + a], rr, s, s, n, unbiased);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int bad = 0;
    for (int a = 0; a < L; ++a) bad |= !math::is_finite(self[a]);
    any_bad = bad;
  }
  __syncthreads();
  if (skip && any_bad) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      flags[L] += 1;
      flags[L + 1] += n;
    }
    return;
  }
  if (blockIdx.x == 0)
    for (int a = threadIdx.x; a < L; a += blockDim.x) {
      if (!skip) flags[a] = math::first_bad_batch(flags[a], self[a], *index);
      thr_sums[a] += math::degeneracy_threshold(scale[a], thr_factor);
    }
  const int64_t P = int64_t(L) * (L + 1) / 2;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < P; p += int64_t(blockDim.x) * gridDim.x) {
    int64_t a, b;
    tiling::triangle_coords(p, L, a, b);
    double v = self[a];
    if (a != b) {
      const double* ra = rowsums + a * T;
      const double* rb = rowsums + b * T;
      double rr = 0.0;
      for (int64_t i = 0; i < n; ++i) rr = fma(ra[i], rb[i], rr);
      v = math::hsic_from_sums(pairs[a * L + b], rr, total[a], total[b], n, unbiased);
      sums[b * L + a] += v;
    }
    sums[a * L + b] += v;
  }
}

void hsic_finish_cuda(const at::Tensor& pairs_in, const at::Tensor& rowsums_in, int64_t n, bool unbiased,
                      const at::Tensor& scale_in, double thr_factor, const at::Tensor& index_in, bool skip,
                      at::Tensor& sums, at::Tensor& thr_sums, at::Tensor& flags) {
  check_finish_args(pairs_in, rowsums_in, n, scale_in, index_in, sums, thr_sums, flags);
  c10::cuda::CUDAGuard guard(pairs_in.device());
  const int64_t L = pairs_in.size(0), T = rowsums_in.size(1);
  at::Tensor pairs = pairs_in.contiguous(), rowsums = rowsums_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor index = index_in.contiguous();
  const int64_t P = L * (L + 1) / 2;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((P + 255) / 256, 1024)));
  const size_t smem = static_cast<size_t>(2 * L) * sizeof(double);
  TORCH_CHECK(smem <= 48 * 1024, "mpruner._hsic_finish: at most 3072 layers, got ", L);
  hsic_finish_kernel<<<blocks, 256, smem, at::cuda::getCurrentCUDAStream()>>>(
      pairs.data_ptr<double>(), rowsums.data_ptr<double>(), static_cast<int>(L), T, n, unbiased,
      scale.data_ptr<double>(), thr_factor, index.data_ptr<int64_t>(), skip, sums.data_ptr<double>(),
      thr_sums.data_ptr<double>(), flags.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_hsic_partials", &mpruner::hsic_partials_cuda);
  m.impl("_hsic_finish", &mpruner::hsic_finish_cuda);
}

// The register-blocked pass 1 of _hsic_partials (MPRUNER_HSIC_KERNEL=blocked). Its geometry and
// per-thread arithmetic are mpruner/hsic_blocked.h, run on the CPU by tests/cpp/test_tiling.cpp
// over an emulation of these threads; this file only moves memory and places barriers.
//
// Block (tile x, sequence y, z = layer block pair * z groups + z group), 256 threads: thread t
// is row group r = t / 32 and register block t % 32 of its z group. Per barrier the block
// stages kRows = 8 tile rows of every staged layer (lane = column: coalesced global loads), in
// the Gram's dtype, at stage[r][column][slot]; then each thread adds its row's 32 columns into
// its 4x4 pair sums (8 shared loads per 16 FMAs). The row sums are taken while staging, into the
// tiled kernel's slots. At the end the 8 row groups' sums are added in a fixed order.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "mpruner/hsic_blocked.h"
#include "mpruner/tiling.h"
#include "hsic_partials.cuh"

namespace mpruner {
namespace gpu {
namespace {

using tiling::kTile;
using blocked::kReg;
using blocked::kRows;
constexpr int kThreads = blocked::kThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGridY = 65535;
constexpr int kPairs = kReg * kReg;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    blocked_partials_kernel(const scalar_t* __restrict__ grams, const int64_t* __restrict__ lengths, int L, int B,
                            int T, int b0, int Lb, int zgroups, bool unbiased, double* __restrict__ pair_part,
                            double* __restrict__ row_part) {
  const int64_t nb = tiling::layer_blocks(L, Lb);
  int64_t X, Y;
  tiling::triangle_coords(blockIdx.z / zgroups, nb, X, Y);
  const int64_t zg = blockIdx.z % zgroups;
  const bool same = X == Y;
  const int64_t nx = tiling::block_layers(X, L, Lb), ny = same ? 0 : tiling::block_layers(Y, L, Lb);
  const int64_t slots = blocked::slot_count(nx, ny, same);
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2;
  int64_t I, J;
  tiling::triangle_coords(blockIdx.x, nt, I, J);
  const int b = b0 + blockIdx.y;
  const int64_t n = tiling::sequence_length(lengths, b, T);  // checked on the host
  if (J * kTile >= n) return;                                // the reduction never reads this tile
  if (zg >= blocked::z_groups(nx, ny, same)) return;          // a smaller block pair needs fewer groups

  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* stage = reinterpret_cast<scalar_t*>(smem_raw);  // [kRows][kTile][slots]
  const int64_t stage_bytes = blocked::shared_bytes(slots, 0, sizeof(scalar_t));
  double* colsum = reinterpret_cast<double*>(smem_raw + stage_bytes);  // [nx][kTile]
  double* group_sums = reinterpret_cast<double*>(smem_raw);            // after the last stage

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool with_sums = same && zg == 0;
  const int r = blocked::row_group(threadIdx.x);
  const int64_t k = blocked::thread_register_block(threadIdx.x, zg);
  const bool active = k < blocked::register_blocks(nx, ny, same);
  int a0 = 0, bq0 = 0;
  if (active) blocked::register_block_slots(k, nx, ny, same, a0, bq0);
  double acc[kPairs], dacc[kPairs];
#pragma unroll
  for (int p = 0; p < kPairs; ++p) acc[p] = dacc[p] = 0.0;
  // Padding slots stay zero for the whole kernel; the real ones are rewritten every stage.
  for (int64_t e = threadIdx.x; e < int64_t(kRows) * kTile * slots; e += kThreads)
    stage[e] = scalar_t(0);
  if (with_sums)
    for (int64_t e = threadIdx.x; e < nx * kTile; e += kThreads) colsum[e] = 0.0;
  __syncthreads();

  const int64_t j = J * kTile + lane;
  const int64_t mat = int64_t(T) * T;
  for (int s0 = 0; s0 < kTile && I * kTile + s0 < n; s0 += kRows) {
    for (int64_t slot = warp; slot < slots; slot += kWarps) {  // one warp per slot: no race on colsum
      const int64_t l = blocked::slot_layer(slot, X, Y, L, Lb);
      if (l < 0) continue;
      const scalar_t* src = grams + (l * B + b) * mat;
      for (int rr = 0; rr < kRows; ++rr) {
        const int64_t i = I * kTile + s0 + rr;
        const bool keep = blocked::staged_entry(i, j, n, unbiased);
        const scalar_t v = keep ? src[i * T + j] : scalar_t(0);
        stage[blocked::stage_offset(rr, lane, slot, slots)] = v;
        if (with_sums && i < n) {
          double sum = static_cast<double>(v);
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, off);
          if (lane == 0) row_part[tiling::rowpart_slot(b, blockIdx.x, 0, l, s0 + rr, tiles, L)] = sum;
          if (j > i) colsum[slot * kTile + lane] += static_cast<double>(v);  // K_ij also belongs to row j
        }
      }
    }
    __syncthreads();
    if (active) {
      const int64_t i = I * kTile + s0 + r;
      const int diag = (I == J && i < n) ? s0 + r : -1;  // the row's diagonal entry, once
      blocked::accumulate_row(stage + blocked::stage_offset(r, 0, 0, slots), slots, a0, bq0, diag, acc, dacc);
    }
    __syncthreads();
  }
  // Row groups' sums, then added in the fixed order r = 0..kRows-1 (the stage buffer is free now).
  if (active) {
#pragma unroll
    for (int p = 0; p < kPairs; ++p)
      group_sums[(int64_t(r) * blocked::kBlocksPerRow + threadIdx.x % blocked::kBlocksPerRow) * kPairs + p] =
          2.0 * acc[p] - dacc[p];
  }
  __syncthreads();
  const int P = L * (L + 1) / 2;
  double* out = pair_part + (static_cast<int64_t>(b) * tiles + blockIdx.x) * P;
  for (int e = threadIdx.x; e < blocked::kBlocksPerRow * kPairs; e += kThreads) {
    const int q = e / kPairs, p = e % kPairs;
    const int64_t kq = zg * blocked::kBlocksPerRow + q;
    if (kq >= blocked::register_blocks(nx, ny, same)) continue;
    int qa0, qb0;
    blocked::register_block_slots(kq, nx, ny, same, qa0, qb0);
    int64_t ga, gb;
    if (!blocked::block_pair(qa0, qb0, p / kReg, p % kReg, X, Y, L, Lb, same, ga, gb)) continue;
    double total = 0.0;
    for (int g = 0; g < kRows; ++g) total += group_sums[(int64_t(g) * blocked::kBlocksPerRow + q) * kPairs + p];
    out[tiling::triangle_index(ga, gb, L)] = total;
  }
  if (with_sums)
    for (int64_t slot = warp; slot < nx; slot += kWarps)
      row_part[tiling::rowpart_slot(b, blockIdx.x, 1, X * Lb + slot, lane, tiles, L)] = colsum[slot * kTile + lane];
}

}  // namespace

void launch_blocked_partials(const PartialsLaunch& args) {
  const at::Tensor& grams = args.grams;
  const int L = grams.size(0), B = grams.size(1), T = grams.size(2);
  const int64_t elem = grams.element_size();
  const int64_t Lb = blocked::layer_block_size(L, args.shared_optin, elem);
  TORCH_CHECK(Lb >= 1, "mpruner._hsic_partials: the device's shared memory (", args.shared_optin,
              " bytes) holds too few layers for MPRUNER_HSIC_KERNEL=blocked");
  const int64_t nb = tiling::layer_blocks(L, Lb);
  // The largest block pair decides the z groups (and the shared memory) of all.
  const bool one = nb == 1;
  const int64_t zgroups = blocked::z_groups(Lb, one ? 0 : Lb, one);
  const int64_t slots = blocked::slot_count(Lb, one ? 0 : Lb, one);
  const size_t smem = static_cast<size_t>(blocked::shared_bytes(slots, Lb, elem));
  const int64_t z = nb * (nb + 1) / 2 * zgroups;
  TORCH_CHECK(z <= 65535, "mpruner._hsic_partials: ", L, " layers need ", z, " thread-block layers (at most 65535)");
  const int64_t nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "mpruner_hsic_blocked_cuda", [&] {
    auto kernel = blocked_partials_kernel<scalar_t>;
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    for (int b0 = 0; b0 < B; b0 += kMaxGridY) {
      dim3 grid(tiles, std::min(kMaxGridY, B - b0), z);
      kernel<<<grid, kThreads, smem, stream>>>(grams.data_ptr<scalar_t>(), args.lengths, L, B, T, b0,
                                               static_cast<int>(Lb), static_cast<int>(zgroups), args.unbiased,
                                               args.pair_part, args.row_part);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

}  // namespace gpu
}  // namespace mpruner

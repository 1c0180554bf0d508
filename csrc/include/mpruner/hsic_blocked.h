// Geometry and per-thread arithmetic of the register-blocked _hsic_partials kernel
// (MPRUNER_HSIC_KERNEL=blocked), shared with the CPU so that tests/cpp/test_tiling.cpp runs the
// very loops the GPU runs, on an emulation of its threads.
//
// Against the tiled kernel (one tile row per barrier, one layer a times R layers b per thread,
// 12 shared loads per 8 FMAs) it stages kRows tile rows of every layer per barrier, in the Gram's
// own dtype, laid out [row][column][layer slot] so that a thread's 4 + 4 layers at one column are
// consecutive; each thread owns a 4x4 block of layer pairs (8 loads per 16 FMAs) for one staged
// row, and consecutive lanes take consecutive blocks of layers b. Per tile the kRows row groups'
// sums are added in a fixed order (bitwise reproducible), into the tiled kernel's slots, so the
// same reduction kernels follow.
#pragma once

#include <cstdint>

#include "mpruner/hsic_math.h"
#include "mpruner/tiling.h"

#if defined(__CUDACC__)
#define MPRUNER_UNROLL _Pragma("unroll")
#else
#define MPRUNER_UNROLL
#endif

namespace mpruner {
namespace blocked {

constexpr int kRows = 8;                       // tile rows staged per barrier: one per row group
constexpr int kReg = 4;                        // a thread's kReg x kReg layer pairs
constexpr int kThreads = tiling::kHsicThreads;
constexpr int kBlocksPerRow = kThreads / kRows;  // register blocks per row group (32: one warp)

MPRUNER_HD int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Slots of the staged layers: X's layers at [0, nx), padded to a multiple of kReg, then Y's
// (off the diagonal); padding slots hold zeros.
MPRUNER_HD int64_t x_slots(int64_t nx) { return round_up(nx, kReg); }

MPRUNER_HD int64_t slot_count(int64_t nx, int64_t ny, bool same) {
  return same ? x_slots(nx) : x_slots(nx) + round_up(ny, kReg);
}

// Global layer of a slot, or -1 for padding.
MPRUNER_HD int64_t slot_layer(int64_t slot, int64_t X, int64_t Y, int64_t L, int64_t Lb) {
  const int64_t nx = tiling::block_layers(X, L, Lb), xs = x_slots(nx);
  if (slot < xs) return slot < nx ? X * Lb + slot : -1;
  const int64_t ny = X == Y ? 0 : tiling::block_layers(Y, L, Lb);
  return slot - xs < ny ? Y * Lb + (slot - xs) : -1;
}

// Register blocks of a block pair: the triangle A <= B of X's kReg-blocks, or X's blocks times Y's.
MPRUNER_HD int64_t register_blocks(int64_t nx, int64_t ny, bool same) {
  const int64_t ax = x_slots(nx) / kReg;
  return same ? ax * (ax + 1) / 2 : ax * (round_up(ny, kReg) / kReg);
}

// Register block k -> the first slots of its a-layers and b-layers. Consecutive k (consecutive
// lanes) step along b.
MPRUNER_HD void register_block_slots(int64_t k, int64_t nx, int64_t ny, bool same, int& a0, int& b0) {
  const int64_t ax = x_slots(nx) / kReg;
  if (same) {
    int64_t A, B;
    tiling::triangle_coords(k, ax, A, B);
    a0 = static_cast<int>(A * kReg);
    b0 = static_cast<int>(B * kReg);
  } else {
    const int64_t by = round_up(ny, kReg) / kReg;
    a0 = static_cast<int>((k / by) * kReg);
    b0 = static_cast<int>(x_slots(nx) + (k % by) * kReg);
  }
}

// Thread t of z group g: row group t / kBlocksPerRow, register block g * kBlocksPerRow + t % kBlocksPerRow.
MPRUNER_HD int row_group(int t) { return t / kBlocksPerRow; }
MPRUNER_HD int64_t thread_register_block(int t, int64_t g) { return g * kBlocksPerRow + t % kBlocksPerRow; }
MPRUNER_HD int64_t z_groups(int64_t nx, int64_t ny, bool same) {
  return (register_blocks(nx, ny, same) + kBlocksPerRow - 1) / kBlocksPerRow;
}

// Offset of (staged row r, tile column jj, slot) in the stage buffer of `slots` slots per column.
MPRUNER_HD int64_t stage_offset(int r, int jj, int64_t slot, int64_t slots) {
  return (int64_t(r) * tiling::kTile + jj) * slots + slot;
}

// The staged value of Gram entry (i, j): the upper triangle j >= i of the valid n x n block,
// the diagonal dropped when unbiased; 0 elsewhere.
MPRUNER_HD bool staged_entry(int64_t i, int64_t j, int64_t n, bool unbiased) {
  return i < n && j < n && j >= i && math::entry_counts(i, j, unbiased);
}

// One staged row (kTile columns of `slots` values) into a thread's 4x4 pair sums: acc over every
// staged entry, dacc over the diagonal entry (column `diag`, or none when diag < 0). The tile's
// weighted sum (off-diagonal entries stand for (i, j) and (j, i)) is 2 acc - dacc.
template <typename S>
MPRUNER_HD void accumulate_row(const S* row, int64_t slots, int a0, int b0, int diag, double* acc, double* dacc) {
  for (int jj = 0; jj < tiling::kTile; ++jj) {
    const S* col = row + int64_t(jj) * slots;
    double x[kReg], y[kReg];
MPRUNER_UNROLL
    for (int k = 0; k < kReg; ++k) {
      x[k] = static_cast<double>(col[a0 + k]);
      y[k] = static_cast<double>(col[b0 + k]);
    }
MPRUNER_UNROLL
    for (int ka = 0; ka < kReg; ++ka)
MPRUNER_UNROLL
      for (int kb = 0; kb < kReg; ++kb) acc[ka * kReg + kb] = fma(x[ka], y[kb], acc[ka * kReg + kb]);
  }
  if (diag >= 0) {
    const S* col = row + int64_t(diag) * slots;
MPRUNER_UNROLL
    for (int ka = 0; ka < kReg; ++ka)
MPRUNER_UNROLL
      for (int kb = 0; kb < kReg; ++kb)
        dacc[ka * kReg + kb] = fma(static_cast<double>(col[a0 + ka]), static_cast<double>(col[b0 + kb]),
                                   dacc[ka * kReg + kb]);
  }
}

// Pair (a0 + ka, b0 + kb) of a register block -> its global layers, false when it is padding or
// (on the diagonal block pair) below the diagonal.
MPRUNER_HD bool block_pair(int a0, int b0, int ka, int kb, int64_t X, int64_t Y, int64_t L, int64_t Lb, bool same,
                           int64_t& ga, int64_t& gb) {
  ga = slot_layer(a0 + ka, X, Y, L, Lb);
  gb = slot_layer(b0 + kb, X, Y, L, Lb);
  return ga >= 0 && gb >= 0 && (!same || ga <= gb);
}

// Shared bytes of one block: the stage buffer (or, reused after the last stage, the row groups'
// pair sums: kRows x kBlocksPerRow x 16 doubles, whichever is larger), then the column sums of
// X's layers (kTile doubles each).
MPRUNER_HD int64_t shared_bytes(int64_t slots, int64_t nx, int64_t elem_size) {
  const int64_t stage = int64_t(kRows) * tiling::kTile * slots * elem_size;
  const int64_t sums = int64_t(kRows) * kBlocksPerRow * kReg * kReg * int64_t(sizeof(double));
  return round_up(stage > sums ? stage : sums, 16) + nx * tiling::kTile * int64_t(sizeof(double));
}

// Layers per block: all L when they fit `budget` shared bytes, else the largest Lb whose
// off-diagonal block pair (2 Lb layers) fits; 0 when not even one layer pair fits.
MPRUNER_HD int64_t layer_block_size(int64_t L, int64_t budget, int64_t elem_size) {
  if (shared_bytes(slot_count(L, 0, true), L, elem_size) <= budget) return L;
  int64_t lb = L / 2 + 1;
  while (lb > 0 && shared_bytes(slot_count(lb, lb, false), lb, elem_size) > budget) --lb;
  return lb;
}

}  // namespace blocked
}  // namespace mpruner

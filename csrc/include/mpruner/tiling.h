// Index math of the CUDA kernels, shared with the CPU so that CPU tests (the C++
// ctest and the test-only op mpruner::_tiling_selftest) check every geometry the
// GPU can meet: upper-triangle tiles, layer-pair chunks, row splits and the slots
// of the per-tile partial sums that the fixed-order reduction adds up.
#pragma once

#include <cmath>
#include <cstdint>

#include "mpruner/hsic_math.h"  // MPRUNER_HD

namespace mpruner {
namespace tiling {

constexpr int kTile = 32;            // Gram tile edge (one warp lane per column)
constexpr int kHsicThreads = 256;    // threads of one _hsic_partials block
constexpr int kMaxChunkPairs = 16;   // most layer pairs one thread accumulates

// Index of (I, J), I <= J, among the upper-triangle cells of an nt x nt grid,
// counted row by row: row I starts at I*nt - I(I-1)/2.
MPRUNER_HD int64_t triangle_index(int64_t I, int64_t J, int64_t nt) {
  return I * nt - I * (I - 1) / 2 + (J - I);
}

// Inverse of triangle_index in closed form: the row is the largest I with
// start(I) <= t, from the quadratic's root (rounded, then corrected by one step
// either way: double rounding never misses by more for nt < 2^26).
MPRUNER_HD void triangle_coords(int64_t t, int64_t nt, int64_t& I, int64_t& J) {
  const double b = 2.0 * double(nt) + 1.0;
  int64_t i = static_cast<int64_t>((b - sqrt(b * b - 8.0 * double(t))) * 0.5);
  if (i < 0) i = 0;
  if (i > nt - 1) i = nt - 1;
  while (i > 0 && triangle_index(i, i, nt) > t) --i;
  while (i + 1 < nt && triangle_index(i + 1, i + 1, nt) <= t) ++i;
  I = i;
  J = i + (t - triangle_index(i, i, nt));
}

MPRUNER_HD int64_t num_tiles(int64_t T) { return (T + kTile - 1) / kTile; }

// Layer pairs (a, b), a <= b, go to threads in chunks of up to R consecutive b of
// one row a: the thread loads layer a's value once per column for R products.
MPRUNER_HD int64_t chunks_in_row(int64_t a, int64_t L, int64_t R) { return (L - a + R - 1) / R; }

MPRUNER_HD int64_t num_chunks(int64_t L, int64_t R) {
  int64_t c = 0;
  for (int64_t a = 0; a < L; ++a) c += chunks_in_row(a, L, R);
  return c;
}

// Chunk c -> its row a, first b and number of pairs (0 when c is past the end).
MPRUNER_HD void chunk_coords(int64_t c, int64_t L, int64_t R, int& a, int& b0, int& count) {
  for (int64_t row = 0; row < L; ++row) {
    const int64_t k = chunks_in_row(row, L, R);
    if (c < k) {
      a = static_cast<int>(row);
      b0 = static_cast<int>(row + c * R);
      const int64_t left = L - (row + c * R);
      count = static_cast<int>(left < R ? left : R);
      return;
    }
    c -= k;
  }
  a = 0;
  b0 = 0;
  count = 0;
}

// Pairs per thread from the real pair count: the smallest R in {1, 2, 4, 8, 16} whose
// chunks fit one block's threads (one pass over the Grams); past that R = 16 and
// several pair groups.
MPRUNER_HD int pairs_per_thread(int64_t L) {
  for (int R = 1; R < kMaxChunkPairs; R *= 2)
    if (num_chunks(L, R) <= kHsicThreads) return R;
  return kMaxChunkPairs;
}

MPRUNER_HD int64_t pair_groups(int64_t L) {
  return (num_chunks(L, pairs_per_thread(L)) + kHsicThreads - 1) / kHsicThreads;
}

// Per-tile partial row sums: each tile (I, J) of sequence b writes, per layer l,
// 32 row-part sums (rows of block I, entries j >= i of the tile) and 32 column-part
// sums (rows of block J, entries i < j: the symmetric half). Slot layout:
// [b][tile][part][l][32].
MPRUNER_HD int64_t rowpart_slot(int64_t b, int64_t tile, int part, int64_t l, int64_t lane, int64_t tiles,
                                int64_t L) {
  return (((b * tiles + tile) * 2 + part) * L + l) * kTile + lane;
}

// Row sums in a fixed order: row i = sum over J >= I of tile (I, J)'s row part, then
// over I' <= I of tile (I', I)'s column part (I = i / 32). The same inputs always add
// in the same order: bitwise reproducible, unlike atomics.
template <typename Load>
MPRUNER_HD double reduce_row(int64_t b, int64_t l, int64_t i, int64_t nt_valid, int64_t nt, int64_t L, Load load) {
  const int64_t I = i / kTile, lane = i % kTile, tiles = nt * (nt + 1) / 2;
  double s = 0.0;
  for (int64_t J = I; J < nt_valid; ++J) s += load(rowpart_slot(b, triangle_index(I, J, nt), 0, l, lane, tiles, L));
  for (int64_t Ip = 0; Ip <= I; ++Ip) s += load(rowpart_slot(b, triangle_index(Ip, I, nt), 1, l, lane, tiles, L));
  return s;
}

// Row split of n rows into S near-equal parts: part s is [r0, r1).
MPRUNER_HD void split_rows(int64_t n, int64_t S, int64_t s, int64_t& r0, int64_t& r1) {
  const int64_t q = n / S, r = n % S;
  r0 = s * q + (s < r ? s : r);
  r1 = r0 + q + (s < r ? 1 : 0);
}

}  // namespace tiling
}  // namespace mpruner

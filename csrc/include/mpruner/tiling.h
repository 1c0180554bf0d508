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

// ---------------------------------------------------------------- layer blocks
// One thread block stages the tile rows of every layer it reads in shared memory, so the layers
// one block can take are capped by the device's opt-in shared memory (about 446 on sm_90 for the
// tiled kernel). Beyond that the L layers go in blocks of Lb (half the cap, so that two blocks fit
// together): grid z runs over block pairs (X, Y), X <= Y. Block pair (X, X) stages X's layers and
// computes their pairs a <= b (the triangle); (X, Y), X < Y, stages X's then Y's layers and
// computes the cross pairs only (a rectangle). Staged layer s of (X, Y) is global layer
// staged_layer(s, ...); the row sums of a layer come from its (X, X) block pair alone.
MPRUNER_HD int64_t layer_block_size(int64_t L, int64_t cap) {
  if (L <= cap) return L;
  const int64_t half = cap / 2;
  return half > 0 ? half : 1;
}

MPRUNER_HD int64_t layer_blocks(int64_t L, int64_t Lb) { return (L + Lb - 1) / Lb; }

MPRUNER_HD int64_t block_layers(int64_t X, int64_t L, int64_t Lb) {
  const int64_t left = L - X * Lb;
  return left < Lb ? left : Lb;
}

// Layers staged by block pair (X, Y): X's alone on the diagonal, X's and Y's off it.
MPRUNER_HD int64_t staged_count(int64_t X, int64_t Y, int64_t L, int64_t Lb) {
  return X == Y ? block_layers(X, L, Lb) : block_layers(X, L, Lb) + block_layers(Y, L, Lb);
}

MPRUNER_HD int64_t staged_layer(int64_t s, int64_t X, int64_t Y, int64_t L, int64_t Lb) {
  const int64_t nx = block_layers(X, L, Lb);
  return s < nx ? X * Lb + s : Y * Lb + (s - nx);
}

// Layer pairs (a, b) of a block pair go to threads in chunks of up to R consecutive b of one row
// a: the thread loads layer a's value once per column for R products. Rows a < nx (X's staged
// layers); row a's b run from a (triangle, `same`) or from nx (rectangle) up to S.
MPRUNER_HD int64_t first_pair_b(int64_t a, int64_t nx, bool same) { return same ? a : nx; }

MPRUNER_HD int64_t chunks_in_row(int64_t a, int64_t nx, int64_t S, bool same, int64_t R) {
  return (S - first_pair_b(a, nx, same) + R - 1) / R;
}

MPRUNER_HD int64_t num_chunks(int64_t nx, int64_t S, bool same, int64_t R) {
  int64_t c = 0;
  for (int64_t a = 0; a < nx; ++a) c += chunks_in_row(a, nx, S, same, R);
  return c;
}

// Chunk c -> its row a, first b and number of pairs (0 when c is past the end).
MPRUNER_HD void chunk_coords(int64_t c, int64_t nx, int64_t S, bool same, int64_t R, int& a, int& b0, int& count) {
  for (int64_t row = 0; row < nx; ++row) {
    const int64_t k = chunks_in_row(row, nx, S, same, R);
    if (c < k) {
      const int64_t first = first_pair_b(row, nx, same) + c * R;
      const int64_t left = S - first;
      a = static_cast<int>(row);
      b0 = static_cast<int>(first);
      count = static_cast<int>(left < R ? left : R);
      return;
    }
    c -= k;
  }
  a = 0;
  b0 = 0;
  count = 0;
}

// The single-block forms (all L layers staged, the triangle).
MPRUNER_HD int64_t chunks_in_row(int64_t a, int64_t L, int64_t R) { return chunks_in_row(a, L, L, true, R); }
MPRUNER_HD int64_t num_chunks(int64_t L, int64_t R) { return num_chunks(L, L, true, R); }
MPRUNER_HD void chunk_coords(int64_t c, int64_t L, int64_t R, int& a, int& b0, int& count) {
  chunk_coords(c, L, L, true, R, a, b0, count);
}

// Pairs per thread: the smallest R in {1, 2, 4, 8, 16} whose chunks fit one block's threads
// (one pass over the Grams); past that R = 16 and several pair groups. With layer blocks the
// largest block pair decides (the rectangle of two full blocks).
MPRUNER_HD int64_t max_chunks(int64_t L, int64_t Lb, int64_t R) {
  return L <= Lb ? num_chunks(L, R) : num_chunks(Lb, 2 * Lb, false, R);
}

MPRUNER_HD int pairs_per_thread(int64_t L, int64_t Lb) {
  for (int R = 1; R < kMaxChunkPairs; R *= 2)
    if (max_chunks(L, Lb, R) <= kHsicThreads) return R;
  return kMaxChunkPairs;
}

MPRUNER_HD int64_t pair_groups(int64_t L, int64_t Lb) {
  return (max_chunks(L, Lb, pairs_per_thread(L, Lb)) + kHsicThreads - 1) / kHsicThreads;
}

MPRUNER_HD int pairs_per_thread(int64_t L) { return pairs_per_thread(L, L); }
MPRUNER_HD int64_t pair_groups(int64_t L) { return pair_groups(L, L); }

// Layers one block of a kernel can stage: shared bytes over the bytes each layer takes.
MPRUNER_HD int64_t layers_per_block(int64_t shared_bytes, int64_t bytes_per_layer) {
  return shared_bytes / bytes_per_layer;
}

// Sequence b's valid length: lengths[b], or all T when no lengths are given (hsic_matrix).
MPRUNER_HD int64_t sequence_length(const int64_t* lengths, int64_t b, int64_t T) {
  return lengths == nullptr ? T : lengths[b];
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

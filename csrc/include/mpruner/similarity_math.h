// Per-token arithmetic of the cosine / angular-distance kernels, shared by the CPU and
// CUDA backends (the .cu file adds only launch geometry and memory movement).
//
// Zero-vector rule (documented in README): two zero vectors are identical (cosine 1,
// angular distance 0); a zero vector and a non-zero one are orthogonal (cosine 0,
// angular distance 1/2). Cosines are clamped to [-1, 1] before arccos, so rounding never
// gives NaN.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef MPRUNER_HD
#if defined(__CUDACC__)
#define MPRUNER_HD __host__ __device__ __forceinline__
#else
#define MPRUNER_HD inline
#endif
#endif

namespace mpruner {
namespace sim {

// cos(a, b) from the dot product and the two squared norms, with the zero-vector rule.
MPRUNER_HD double cosine_from_dots(double dot, double sq_a, double sq_b) {
  if (sq_a <= 0.0 || sq_b <= 0.0) return (sq_a <= 0.0 && sq_b <= 0.0) ? 1.0 : 0.0;
  double c = dot / sqrt(sq_a * sq_b);
  return c > 1.0 ? 1.0 : (c < -1.0 ? -1.0 : c);
}

// Angular distance arccos(cos)/pi in [0, 1] (Gromov et al.); `c` is already clamped.
MPRUNER_HD double angular_from_cosine(double c) { return acos(c) * 0.31830988618379067154; }

// Upper-triangle pairs (a <= b) of K vectors, diagonal included: K(K+1)/2 of them.
MPRUNER_HD int64_t pair_count(int64_t K) { return K * (K + 1) / 2; }

// The p-th pair of the row-major upper triangle (a <= b): row a holds K - a pairs.
MPRUNER_HD void pair_at(int64_t p, int64_t K, int64_t* a, int64_t* b) {
  int64_t row = 0, start = 0;
  while (start + (K - row) <= p) {
    start += K - row;
    ++row;
  }
  *a = row;
  *b = row + (p - start);
}

// Element offset of token `row` (an index into the flattened (B, T) grid) in a (B, T, D)
// tensor with batch stride s0 and token stride s1 (the feature dimension is dense).
MPRUNER_HD int64_t token_offset(int64_t row, int64_t T, int64_t s0, int64_t s1) {
  return (row / T) * s0 + (row % T) * s1;
}

// ---------------------------------------------------------------- CUDA geometry
// Lanes that share one pair's dot product: a power of two in [1, 32], as many as the block's
// threads allow for all P pairs at once (few tensors: a warp per pair; many: a thread per pair).
MPRUNER_HD int lanes_per_pair(int64_t P, int threads) {
  int lanes = 32;
  while (lanes > 1 && int64_t(threads / lanes) < P) lanes /= 2;
  return lanes;
}

// Features of one token staged per pass, for all K tensors within `bytes` of shared memory:
// at most D; else one more than a multiple of 32, so that threads reading tensors a and b at
// the same feature fall into different banks.
MPRUNER_HD int64_t stage_width(int64_t K, int64_t D, int64_t bytes, int64_t elem_size) {
  int64_t w = bytes / (K * elem_size);
  if (w >= D) return D;
  w = (w - 1) / 32 * 32 + 1;
  return w >= 1 ? w : 1;
}

// Thread blocks over the N tokens: each takes a contiguous run (tiling::split_rows) and writes
// its own partial sums, added in block order afterwards (no atomics: bitwise reproducible).
// A function of N and P only, never of the device, and the partial sums stay within ~64 MiB.
MPRUNER_HD int64_t token_blocks(int64_t N, int64_t P) {
  int64_t g = N < 1024 ? N : 1024;
  const int64_t cap = (int64_t(64) << 20) / (16 * (P > 0 ? P : 1));
  if (g > cap) g = cap;
  return g >= 1 ? g : 1;
}

}  // namespace sim
}  // namespace mpruner

// Per-element arithmetic of the one-pass feature shift that forms the Gram GEMM's input,
// shared by the CPU and CUDA kernels (the CPU tests exercise what the GPU runs).
//
// HSIC is invariant to a constant shift of the features, so the float32 Gram only needs
// features close to centered: each value becomes v = x - s with a shift s known before
// the pass (the previous batch's column means, or the batch's first row). In the same
// pass v is written in the form the precision mode's GEMM takes:
//   kNone:  v itself (float32 or float64; bfloat16 storage rounds it, CUDA "medium")
//   kRound: v rounded to the nearest bfloat16, stored in float32 (CPU "medium")
//   kHiLo:  v = hi + lo with hi, lo both exactly bfloat16 (CPU "high"); a row holds
//           [hi | hi | lo | hi], so that A = row[0:3d], B = row[d:4d] give
//           A B^T = hi hi^T + hi lo^T + lo hi^T in ONE GEMM (lo lo^T, below 2^-16 of the
//           product, is dropped).
#pragma once

#include <cstdint>
#include <cstring>

#include "mpruner/hsic_math.h"  // MPRUNER_HD

namespace mpruner {
namespace shift {

enum Split : int { kNone = 0, kRound = 1, kHiLo = 2 };

// Segments of d values per output row for a split.
MPRUNER_HD int64_t width_factor(int split) { return split == kHiLo ? 4 : 1; }

MPRUNER_HD uint32_t float_bits(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  return u;
}

MPRUNER_HD float bits_float(uint32_t u) {
  float v;
  memcpy(&v, &u, sizeof v);
  return v;
}

// The float32 value of v rounded to bfloat16 (8 significant bits), round to nearest
// even, as torch's float -> bfloat16 conversion; NaN stays NaN, overflow gives inf.
MPRUNER_HD float bf16_round(float v) {
  uint32_t u = float_bits(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return v;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bits_float(u & 0xffff0000u);
}

// v = hi + lo + r with hi = bf16(v), lo = bf16(v - hi) and |r| <= 2^-16 |v|: v - hi is
// exact in float32 (hi is v rounded), and rounding it to 8 bits leaves 2^-8 of 2^-8 |v|.
MPRUNER_HD void split_hi_lo(float v, float& hi, float& lo) {
  hi = bf16_round(v);
  lo = bf16_round(v - hi);
}

// Writes element j of one output row (d features) in the split's layout and returns
// v = x - s, whose column sums the caller accumulates (in its own fixed order). The
// split is a template argument so that the CPU's inner loop has no branch.
template <int split, typename in_t, typename out_t>
MPRUNER_HD in_t write_shifted(in_t x, in_t s, int64_t j, int64_t d, out_t* row) {
  const in_t v = x - s;
  if (split == kNone) {
    row[j] = static_cast<out_t>(v);
  } else if (split == kRound) {
    row[j] = static_cast<out_t>(bf16_round(static_cast<float>(v)));
  } else {
    float hi, lo;
    split_hi_lo(static_cast<float>(v), hi, lo);
    row[j] = static_cast<out_t>(hi);
    row[d + j] = static_cast<out_t>(hi);
    row[2 * d + j] = static_cast<out_t>(lo);
    row[3 * d + j] = static_cast<out_t>(hi);
  }
  return v;
}

}  // namespace shift
}  // namespace mpruner

// Grams by block-row GEMMs (the upper triangle) or one full GEMM, shared by the
// accumulator's Grams and the fused per-sequence token kernel (CPU).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace mpruner {

// The block size used when no measured one is given: small blocks for short Grams.
inline int64_t default_gram_block(int64_t n) { return n <= 256 ? 64 : 128; }

// Rows [r0, r1) of the Gram a b^T (a, b: (n, k) with unit column stride) into out (n, n,
// any row stride). block == 0: one GEMM over all n columns. block > 0: GEMMs of `block`
// rows, each against the columns from its first row on: rows [s, s + block) only meet
// columns >= s, so the upper triangle (plus the small lower parts of diagonal blocks) is
// written with about half the multiply-adds of the full product.
inline void gram_rows_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t r0, int64_t r1,
                           int64_t block) {
  const int64_t n = a.size(0);
  if (r1 <= r0) return;
  if (block <= 0) {
    at::Tensor dst = out.narrow(0, r0, r1 - r0);
    at::mm_out(dst, a.narrow(0, r0, r1 - r0), b.t());
    return;
  }
  for (int64_t s = r0; s < r1; s += block) {
    const int64_t rows = std::min(block, r1 - s);
    at::Tensor dst = out.narrow(0, s, rows).narrow(1, s, n - s);
    at::mm_out(dst, a.narrow(0, s, rows), b.narrow(0, s, n - s).t());
  }
}

// Row boundary k of `parts` slices of an n-row Gram with equal GEMM work: the full
// product's rows all cost alike; the triangle's row i costs n - i, so the k-th boundary
// solves r n - r^2/2 = (k / parts) n^2 / 2. Rounded to 8 rows (whole SIMD panels).
inline int64_t balanced_row(int64_t n, int64_t k, int64_t parts, bool triangle) {
  if (k <= 0) return 0;
  if (k >= parts) return n;
  const double f = double(k) / double(parts);
  const double r = triangle ? double(n) * (1.0 - std::sqrt(1.0 - f)) : double(n) * f;
  return std::min<int64_t>(n, std::max<int64_t>(0, (static_cast<int64_t>(r) + 4) / 8 * 8));
}

// The upper triangle of xc xc^T with the default block size. out may be a view with any
// row stride.
inline void triangular_gram_into(at::Tensor& out, const at::Tensor& xc) {
  const int64_t n = xc.size(0);
  const int64_t block = default_gram_block(n);
  gram_rows_into(out, xc, xc, 0, n, n <= block ? 0 : block);
}

}  // namespace mpruner

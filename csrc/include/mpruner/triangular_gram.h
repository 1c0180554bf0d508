// Upper-triangle Grams by block-row GEMMs, shared by the accumulator's Grams and
// the fused per-sequence token kernel (CPU).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

namespace mpruner {

// Rows [r0, r0 + rows) of the Gram hit only columns >= r0: one GEMM per block
// of rows writes the upper triangle (plus the small lower parts of diagonal
// blocks) with about half the multiply-adds of the full product. out may be a
// view with any row stride.
inline void triangular_gram_into(at::Tensor& out, const at::Tensor& xc) {
  const int64_t n = xc.size(0);
  const int64_t block = n <= 256 ? 64 : 128;
  if (n <= block) {
    at::mm_out(out, xc, xc.t());
    return;
  }
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    int64_t rows = std::min(block, n - r0);
    at::Tensor dst = out.narrow(0, r0, rows).narrow(1, r0, n - r0);
    at::mm_out(dst, xc.narrow(0, r0, rows), xc.narrow(0, r0, n - r0).t());
  }
}

}  // namespace mpruner

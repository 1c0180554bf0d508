// The CPU loop of the one-pass feature shift (mpruner/shift_math.h): rows of one layer
// read once, written once in the GEMM's layout, column sums of x - s accumulated on the way.
// Shared by _shift_features and the per-layer Gram kernel.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "mpruner/shift_math.h"

namespace mpruner {
namespace cpu {

inline int parse_split(c10::string_view split, const char* op) {
  if (split == "none") return shift::kNone;
  if (split == "round") return shift::kRound;
  if (split == "hilo") return shift::kHiLo;
  TORCH_CHECK(false, "mpruner.", op, ": split must be 'none', 'round' or 'hilo', got '", std::string(split), "'");
  return shift::kNone;
}

// Rows [r0, r1) of x (row stride xs, unit column stride) minus s, into out (row stride
// os, split's layout); colsum[j] += sum over those rows of (x - s)[:, j], in row order.
template <int split, typename in_t, typename out_t>
void shift_rows(const in_t* x, int64_t xs, const in_t* s, int64_t r0, int64_t r1, int64_t d, out_t* out, int64_t os,
                double* colsum) {
  for (int64_t r = r0; r < r1; ++r) {
    const in_t* xr = x + r * xs;
    out_t* orow = out + r * os;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) colsum[j] += static_cast<double>(shift::write_shifted<split>(xr[j], s[j], j, d, orow));
  }
}

// shift_rows with the split and dtypes dispatched at run time (once per call, not per element).
inline void shift_rows_any(const at::Tensor& x, const at::Tensor& s, int64_t r0, int64_t r1, at::Tensor& out,
                           int split, double* colsum) {
  const int64_t d = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mpruner_shift_rows", [&] {
    using in_t = scalar_t;
    const in_t* xp = x.data_ptr<in_t>();
    const in_t* sp = s.data_ptr<in_t>();
    auto run = [&](auto* op) {
      if (split == shift::kNone) {
        shift_rows<shift::kNone>(xp, x.stride(0), sp, r0, r1, d, op, out.stride(0), colsum);
      } else if (split == shift::kRound) {
        shift_rows<shift::kRound>(xp, x.stride(0), sp, r0, r1, d, op, out.stride(0), colsum);
      } else {
        shift_rows<shift::kHiLo>(xp, x.stride(0), sp, r0, r1, d, op, out.stride(0), colsum);
      }
    };
    switch (out.scalar_type()) {
      case at::kFloat: run(out.data_ptr<float>()); break;
      case at::kDouble: run(out.data_ptr<double>()); break;
      case at::kBFloat16: run(out.data_ptr<c10::BFloat16>()); break;
      default: TORCH_CHECK(false, "mpruner: the shifted features' dtype must be float32, float64 or bfloat16");
    }
  });
}

}  // namespace cpu
}  // namespace mpruner

// One pass over a Gram row for every layer at once: the CPU core of the
// all-pairs HSIC, shared by _hsic_partials and the fused per-sequence kernel.
#pragma once

#include <cstdint>
#include <vector>

#include "mpruner/hsic_math.h"

namespace mpruner {
namespace cpu {

// sum_j a[j] * b_k[j] for four b's at once: a is loaded once for four pairs.
inline void dot4(const double* a, const double* b0, const double* b1, const double* b2, const double* b3,
                 int64_t m, double* out) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t j = 0; j < m; ++j) {
    double x = a[j];
    s0 += x * b0[j];
    s1 += x * b1[j];
    s2 += x * b2[j];
    s3 += x * b3[j];
  }
  out[0] += s0; out[1] += s1; out[2] += s2; out[3] += s3;
}

inline double dot1(const double* a, const double* b, int64_t m) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < m; ++j) s += a[j] * b[j];
  return s;
}

// Adds row i of one sequence to the pair sums (L x L, upper part) and the row sums
// (L rows of stride T). diag[a] points at layer a's K_ii; the row goes on to K_i,n-1
// contiguously, so Grams can be whole (row stride T) or blocks of rows. buf holds L * n doubles.
template <typename scalar_t>
inline void accumulate_row(const std::vector<const scalar_t*>& diag, int64_t T, int64_t n, int64_t i, bool unbiased,
                           double* buf, double* pair_acc, double* row_acc) {
  const int64_t L = static_cast<int64_t>(diag.size());
  if (math::entry_counts(i, i, unbiased)) {
    for (int64_t a = 0; a < L; ++a) {
      buf[a] = static_cast<double>(diag[a][0]);
      row_acc[a * T + i] += buf[a];
    }
    for (int64_t a = 0; a < L; ++a)
      for (int64_t b = a; b < L; ++b) pair_acc[a * L + b] += math::triangle_weight(i, i) * buf[a] * buf[b];
  }
  const int64_t j0 = i + 1, m = n - j0;
  if (m <= 0) return;
  for (int64_t a = 0; a < L; ++a) {
    const scalar_t* src = diag[a] + 1;
    double* dst = buf + a * m;
    double* col = row_acc + a * T + j0;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; ++j) {
      double v = static_cast<double>(src[j]);
      dst[j] = v;
      s += v;
      col[j] += v;  // symmetry: K_ij also belongs to row j
    }
    row_acc[a * T + i] += s;
  }
  const double w = math::triangle_weight(i, j0);
  double tmp[4];
  for (int64_t a = 0; a < L; ++a) {
    const double* xa = buf + a * m;
    int64_t b = a;
    for (; b + 3 < L; b += 4) {
      tmp[0] = tmp[1] = tmp[2] = tmp[3] = 0;
      dot4(xa, buf + b * m, buf + (b + 1) * m, buf + (b + 2) * m, buf + (b + 3) * m, m, tmp);
      for (int k = 0; k < 4; ++k) pair_acc[a * L + b + k] += w * tmp[k];
    }
    for (; b < L; ++b) pair_acc[a * L + b] += w * dot1(xa, buf + b * m, m);
  }
}

}  // namespace cpu
}  // namespace mpruner

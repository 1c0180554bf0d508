// Per-element arithmetic of the CKA engine, shared by the CPU and CUDA kernels.
//
// Keeping these in one header means the CPU tests exercise the very formulas the
// GPU runs; the .cu files only add launch geometry and memory movement.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MPRUNER_HD __host__ __device__ __forceinline__
#else
#define MPRUNER_HD inline
#endif

namespace mpruner {
namespace math {

// Double centering (biased) vs U-centering (unbiased, Song et al. 2012).
//   biased:   (HKH)_ij = K_ij - r_i/n - r_j/n + s/n^2
//   unbiased: U(K)_ij  = K~_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2)), 0 on the diagonal
// where r are row sums (of K~, the zero-diagonal Gram, when unbiased) and s = sum(r).
// Reciprocals, so that per-element work is multiplications: 1/(n-2) or 1/n for the
// row terms, 1/((n-1)(n-2)) or 1/n^2 for the grand term. Kernels compute them once
// per row (CPU and CUDA alike).
MPRUNER_HD double row_scale(int64_t n, bool unbiased) {
  return unbiased ? 1.0 / double(n - 2) : 1.0 / double(n);
}

MPRUNER_HD double grand_scale(int64_t n, bool unbiased) {
  return unbiased ? 1.0 / (double(n - 1) * double(n - 2)) : 1.0 / (double(n) * double(n));
}

MPRUNER_HD double row_term(double row_sum, int64_t n, bool unbiased) {
  return row_sum * row_scale(n, unbiased);
}

MPRUNER_HD double grand_term(double total, int64_t n, bool unbiased) {
  return total * grand_scale(n, unbiased);
}

MPRUNER_HD double centered_entry(double k, double t_i, double t_j, double g, bool diagonal, bool unbiased) {
  if (unbiased && diagonal) return 0.0;
  return k - t_i - t_j + g;
}

// Whether the Gram entry (i, j) enters row sums and inner products: the
// unbiased estimator works on K~, whose diagonal is zero.
MPRUNER_HD bool entry_counts(int64_t i, int64_t j, bool unbiased) {
  return !(unbiased && i == j);
}

// Divisor that turns <centered K, centered L> into HSIC.
MPRUNER_HD double hsic_normalizer(int64_t n, bool unbiased) {
  return unbiased ? double(n) * double(n - 3) : double(n - 1) * double(n - 1);
}

// HSIC from uncentered sums, so that one pass over the Grams suffices:
//   biased:   <HKH, HLH> = P - (2/n) r_K.r_L + s_K s_L / n^2
//   unbiased: n(n-3) HSIC_1 = P + s_K s_L / ((n-1)(n-2)) - 2/(n-2) r_K.r_L
// with P = sum_ij K_ij L_ij (diagonal excluded when unbiased).
MPRUNER_HD double hsic_from_sums(double p, double rr, double s_k, double s_l, int64_t n, bool unbiased) {
  double nd = double(n);
  double num = unbiased
      ? p + s_k * s_l / ((nd - 1.0) * (nd - 2.0)) - 2.0 / (nd - 2.0) * rr
      : p - 2.0 / nd * rr + s_k * s_l / (nd * nd);
  return num / hsic_normalizer(n, unbiased);
}

// RBF kernel entry from a linear Gram: exp(-||x_i - x_j||^2 / (2 sigma^2)),
// ||x_i - x_j||^2 = g_ii + g_jj - 2 g_ij (clamped: rounding can make it negative; a NaN
// stays NaN, so that NaN activations show in the self-HSIC as with the linear kernel).
MPRUNER_HD double rbf_entry(double g_ij, double g_ii, double g_jj, double inv_two_sigma2) {
  double d2 = g_ii + g_jj - 2.0 * g_ij;
  d2 = d2 < 0.0 ? 0.0 : d2;
  return exp(-d2 * inv_two_sigma2);
}

// Weight of an upper-triangle entry in the symmetric sum over all (i, j).
MPRUNER_HD double triangle_weight(int64_t i, int64_t j) {
  return i == j ? 1.0 : 2.0;
}

// Position in the strict-upper-triangle-masked list of n^2 squared distances (the
// lower triangle and the diagonal set to 0, then sorted) of the pos-th value of
// the full list of all n^2 squared distances (n diagonal zeros, then every
// off-diagonal distance twice). The masked list starts with z = n(n+1)/2 zeros.
MPRUNER_HD int64_t rbf_median_rank(int64_t pos, int64_t n) {
  if (pos < n) return pos;  // one of the diagonal zeros; any of the z leading zeros
  return n * (n + 1) / 2 + (pos - n) / 2;
}

// ---------------------------------------------------------------- the fused epilogue
// (_hsic_finish: HSIC from the sums, the NaN/Inf bookkeeping and the accumulation in one pass.)

// Finite without <cmath>'s overload set (host and device alike): NaN - NaN and inf - inf are NaN.
MPRUNER_HD bool is_finite(double x) { return x - x == 0.0; }

// The degeneracy threshold of a layer whose rough squared magnitude is `scale`
// (mpruner.engine.cka: (DEGENERATE_FACTOR eps^2 scale)^2, factor = DEGENERATE_FACTOR eps^2).
MPRUNER_HD double degeneracy_threshold(double scale, double factor) {
  const double t = factor * scale;
  return t * t;
}

// nan_policy="raise": the first batch whose self-HSIC is not finite, per layer (-1: none yet).
MPRUNER_HD int64_t first_bad_batch(int64_t flag, double self_hsic, int64_t index) {
  return (flag < 0 && !is_finite(self_hsic)) ? index : flag;
}

}  // namespace math
}  // namespace mpruner

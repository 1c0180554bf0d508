// CPU kernel for _hsic_partials: one pass over the upper triangle of every
// layer's Gram, giving all layer-pair inner products and the row sums in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "row_partials.h"

namespace mpruner {
namespace {

// Row i of every layer's Gram (mats: L Grams with row stride T) into the sums.
template <typename scalar_t>
void add_row(const std::vector<const scalar_t*>& mats, int64_t T, int64_t n, int64_t i, bool unbiased,
             std::vector<const scalar_t*>& diag, double* buf, double* pair_acc, double* row_acc) {
  for (size_t a = 0; a < mats.size(); ++a) diag[a] = mats[a] + i * T + i;
  cpu::accumulate_row(diag, T, n, i, unbiased, buf, pair_acc, row_acc);
}

template <typename scalar_t>
void partials_kernel(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased, at::Tensor& pairs,
                     at::Tensor& rowsums) {
  const int64_t L = grams.size(0), B = grams.size(1), T = grams.size(2);
  const scalar_t* base = grams.data_ptr<scalar_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  double* P = pairs.data_ptr<double>();
  double* R = rowsums.data_ptr<double>();
  auto mats_of = [&](int64_t b) {
    std::vector<const scalar_t*> mats(L);
    for (int64_t l = 0; l < L; ++l) mats[l] = base + (l * B + b) * T * T;
    return mats;
  };

  if (B >= at::get_num_threads()) {
    // Many sequences: each one is a task that owns its outputs.
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<double> buf(L * std::max<int64_t>(T, 1));
      std::vector<const scalar_t*> diag(L);
      for (int64_t b = b0; b < b1; ++b) {
        auto mats = mats_of(b);
        for (int64_t i = 0; i < len[b]; ++i)
          add_row(mats, T, len[b], i, unbiased, diag, buf.data(), P + b * L * L, R + b * L * T);
      }
    });
    return;
  }
  // Few sequences (one for hsic_matrix): split rows across threads. Rows u and
  // n-1-u together hold n-1 triangle entries, so every task weighs the same.
  const int64_t nthreads = at::get_num_threads();
  std::vector<double> scratch(nthreads * (L * L + L * T));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = len[b];
    auto mats = mats_of(b);
    std::fill(scratch.begin(), scratch.end(), 0.0);
    at::parallel_for(0, (n + 1) / 2, 1, [&](int64_t u0, int64_t u1) {
      double* slot = scratch.data() + at::get_thread_num() * (L * L + L * T);
      std::vector<double> buf(L * n);
      std::vector<const scalar_t*> diag(L);
      for (int64_t u = u0; u < u1; ++u) {
        add_row(mats, T, n, u, unbiased, diag, buf.data(), slot, slot + L * L);
        if (n - 1 - u != u) add_row(mats, T, n, n - 1 - u, unbiased, diag, buf.data(), slot, slot + L * L);
      }
    });
    // Fixed-order merge keeps results reproducible for a given thread count.
    for (int64_t t = 0; t < nthreads; ++t) {
      const double* slot = scratch.data() + t * (L * L + L * T);
      for (int64_t k = 0; k < L * L; ++k) P[b * L * L + k] += slot[k];
      for (int64_t k = 0; k < L * T; ++k) R[b * L * T + k] += slot[L * L + k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> hsic_partials_cpu(const at::Tensor& grams_in,
                                                     const std::optional<at::Tensor>& lengths_in, bool unbiased) {
  check_partials_args(grams_in, lengths_in);
  const int64_t L = grams_in.size(0), B = grams_in.size(1), T = grams_in.size(2);
  at::Tensor grams = grams_in.contiguous();
  at::Tensor lengths = lengths_in.has_value() ? lengths_in->to(at::kLong).contiguous()
                                              : at::full({B}, T, grams.options().dtype(at::kLong));
  auto opts = grams.options().dtype(at::kDouble);
  at::Tensor pairs = at::zeros({B, L, L}, opts);
  at::Tensor rowsums = at::zeros({B, L, T}, opts);
  if (grams.numel() == 0) return {pairs, rowsums};
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "mpruner_hsic_partials_cpu",
                             [&] { partials_kernel<scalar_t>(grams, lengths, unbiased, pairs, rowsums); });
  // Mirror the upper triangle of each pair matrix.
  pairs = at::triu(pairs) + at::triu(pairs, 1).transpose(1, 2);
  return {pairs, rowsums};
}

// The fused epilogue, on the host: the same helpers (math::) the CUDA kernel calls.
void hsic_finish_cpu(const at::Tensor& pairs_in, const at::Tensor& rowsums_in, int64_t n, bool unbiased,
                     const at::Tensor& scale_in, double thr_factor, const at::Tensor& index, bool skip, at::Tensor& sums,
                     at::Tensor& thr_sums, at::Tensor& flags) {
  check_finish_args(pairs_in, rowsums_in, n, scale_in, index, sums, thr_sums, flags);
  const int64_t L = pairs_in.size(0), T = rowsums_in.size(1);
  at::Tensor pairs = pairs_in.contiguous(), rowsums = rowsums_in.contiguous(), scale = scale_in.contiguous();
  const double* P = pairs.data_ptr<double>();
  const double* R = rowsums.data_ptr<double>();
  double* S = sums.data_ptr<double>();
  double* thr = thr_sums.data_ptr<double>();
  int64_t* F = flags.data_ptr<int64_t>();
  std::vector<double> total(L), self(L);
  auto dot = [&](int64_t a, int64_t b) { return cpu::dot1(R + a * T, R + b * T, n); };
  for (int64_t a = 0; a < L; ++a) {
    total[a] = 0.0;
    for (int64_t i = 0; i < n; ++i) total[a] += R[a * T + i];
  }
  bool any_bad = false;
  for (int64_t a = 0; a < L; ++a) {
    self[a] = math::hsic_from_sums(P[a * L + a], dot(a, a), total[a], total[a], n, unbiased);
    any_bad = any_bad || !math::is_finite(self[a]);
  }
  if (skip && any_bad) {
    F[L] += 1;
    F[L + 1] += n;
    return;
  }
  const int64_t batch = index.item<int64_t>();  // a CPU tensor: no device to wait for
  if (!skip)
    for (int64_t a = 0; a < L; ++a) F[a] = math::first_bad_batch(F[a], self[a], batch);
  const double* sc = scale.data_ptr<double>();
  for (int64_t a = 0; a < L; ++a) {
    thr[a] += math::degeneracy_threshold(sc[a], thr_factor);
    S[a * L + a] += self[a];
    for (int64_t b = a + 1; b < L; ++b) {
      const double v = math::hsic_from_sums(P[a * L + b], dot(a, b), total[a], total[b], n, unbiased);
      S[a * L + b] += v;
      S[b * L + a] += v;
    }
  }
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_hsic_partials", &mpruner::hsic_partials_cpu);
  m.impl("_hsic_finish", &mpruner::hsic_finish_cpu);
}

// CPU kernel for _token_hsic_fused: per-sequence all-pairs HSIC straight from the
// hidden states. One sequence is one task: its real tokens are gathered and
// centered into a thread-local buffer, its L Grams (n x n at the sequence's own
// length, no padding) are built there, and the pair sums are taken while they are
// still in cache. Nothing of size (L, B, T, D) or (L, B, T, T) is ever written,
// which is where the grouped path (stack, gather, mask, center) spent 3/4 of its time.
// Sequences too long for their L Grams to fit the memory bound go in blocks of rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"
#include "mpruner/triangular_gram.h"
#include "row_partials.h"

namespace mpruner {
namespace {

template <typename scalar_t, typename work_t>
struct SequenceTask {
  const std::vector<at::Tensor>& hidden;
  const int64_t L;
  const int64_t rows_cap;  // Gram rows per block: L * rows_cap * n entries per thread at most
  const int64_t dmax;      // widest layer: layer l's mean is at mean[l * dmax]
  bool unbiased;
  at::TensorOptions opts;
  std::vector<work_t> x, grams;
  std::vector<double> mean, buf, pair, row, total;
  std::vector<const work_t*> diag;

  SequenceTask(const std::vector<at::Tensor>& h, int64_t nmax, int64_t width, int64_t rows, bool unb)
      : hidden(h), L(static_cast<int64_t>(h.size())), rows_cap(rows), dmax(width), unbiased(unb),
        opts(at::TensorOptions().dtype(c10::CppTypeToScalarType<work_t>::value)), x(nmax * width),
        grams(L * std::min(rows, nmax) * nmax), mean(L * width), buf(L * nmax), pair(L * L), row(L * nmax), total(L), diag(L) {}

  const scalar_t* token(int64_t l, int64_t b, int64_t p) const {
    const at::Tensor& h = hidden[l];
    return h.data_ptr<scalar_t>() + b * h.stride(0) + p * h.stride(1);
  }

  // Tokens p[r0..n) of layer l, centered (in float64) into x: float32 Grams of centered
  // features stay accurate when tokens share a large offset.
  void gather_centered(int64_t l, int64_t b, const int64_t* p, int64_t r0, int64_t n) {
    const int64_t D = hidden[l].size(2);
    const double* mu = mean.data() + l * dmax;
    for (int64_t i = r0; i < n; ++i) {
      const scalar_t* r = token(l, b, p[i]);
      work_t* dst = x.data() + (i - r0) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<work_t>(static_cast<double>(r[d]) - mu[d]);
    }
  }

  // Sequence b (tokens p[0..n)) -> its L x L HSIC in o.
  void run(int64_t b, const int64_t* p, int64_t n, double* o) {
    for (int64_t l = 0; l < L; ++l) {
      const int64_t D = hidden[l].size(2);
      double* mu = mean.data() + l * dmax;  // dmax: layers may differ in width
      std::fill(mu, mu + D, 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t* r = token(l, b, p[i]);
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) mu[d] += static_cast<double>(r[d]);
      }
      for (int64_t d = 0; d < D; ++d) mu[d] /= static_cast<double>(n);
    }
    std::fill(pair.begin(), pair.end(), 0.0);
    std::fill(row.begin(), row.begin() + L * n, 0.0);
    // Short sequences: all L Grams at once. Long ones: blocks of rows [r0, r1) against
    // columns [r0, n), so the Grams held stay within the memory bound.
    const int64_t rows = std::max<int64_t>(1, std::min(rows_cap, n));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t r1 = std::min(n, r0 + rows), w = n - r0;
      for (int64_t l = 0; l < L; ++l) {
        gather_centered(l, b, p, r0, n);
        work_t* g = grams.data() + l * (r1 - r0) * w;
        at::Tensor xt = at::from_blob(x.data(), {w, hidden[l].size(2)}, opts);
        at::Tensor gt = at::from_blob(g, {r1 - r0, w}, opts);
        if (r1 - r0 == w) {
          triangular_gram_into(gt, xt);
        } else {
          at::mm_out(gt, xt.narrow(0, 0, r1 - r0), xt.t());
        }
      }
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t l = 0; l < L; ++l) diag[l] = grams.data() + l * (r1 - r0) * w + (i - r0) * w + (i - r0);
        cpu::accumulate_row(diag, n, n, i, unbiased, buf.data(), pair.data(), row.data());
      }
    }
    for (int64_t a = 0; a < L; ++a) {
      total[a] = 0;
      for (int64_t i = 0; i < n; ++i) total[a] += row[a * n + i];
    }
    for (int64_t a = 0; a < L; ++a) {
      for (int64_t c = a; c < L; ++c) {
        const double rr = cpu::dot1(row.data() + a * n, row.data() + c * n, n);
        o[a * L + c] = o[c * L + a] = math::hsic_from_sums(pair[a * L + c], rr, total[a], total[c], n, unbiased);
      }
    }
  }
};

template <typename scalar_t, typename work_t>
void fused_kernel(const std::vector<at::Tensor>& hidden, const at::Tensor& positions, const at::Tensor& lengths,
                  bool unbiased, int64_t max_gram_bytes, at::Tensor& out) {
  const int64_t L = static_cast<int64_t>(hidden.size());
  const int64_t B = positions.size(0), T = positions.size(1);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  int64_t dmax = 0;
  for (const auto& h : hidden) dmax = std::max(dmax, h.size(2));
  const int64_t nmax = std::max<int64_t>(1, *std::max_element(len, len + B));
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
  // The memory bound is shared by the threads; below 16 rows per block GEMMs get slow.
  const int64_t per_thread = max_gram_bytes / nthreads / static_cast<int64_t>(sizeof(work_t));
  const int64_t rows_cap = std::max<int64_t>(16, per_thread / (L * nmax));
  double* O = out.data_ptr<double>();

  // Longest sequences first, handed out one at a time: balanced across threads.
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return len[a] > len[b]; });
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    SequenceTask<scalar_t, work_t> task(hidden, nmax, dmax, rows_cap, unbiased);
    for (int64_t k; (k = next.fetch_add(1)) < B;) {
      const int64_t b = order[k];
      task.run(b, pos + b * T, len[b], O + b * L * L);
    }
  });
}

at::Tensor token_hsic_fused_cpu(at::TensorList hidden_in, const at::Tensor& positions_in, const at::Tensor& lengths_in,
                                bool unbiased, int64_t max_gram_bytes) {
  TORCH_CHECK(!hidden_in.empty(), "mpruner._token_hsic_fused: hidden is empty; pass L >= 1 tensors (B, T, D)");
  TORCH_CHECK(positions_in.dim() == 2, "mpruner._token_hsic_fused: positions must be (B, T), got ",
              positions_in.sizes());
  const int64_t B = positions_in.size(0), T = positions_in.size(1);
  TORCH_CHECK(lengths_in.dim() == 1 && lengths_in.size(0) == B, "mpruner._token_hsic_fused: lengths must be (B,) with B=",
              B, ", got ", lengths_in.sizes());
  const auto dtype = hidden_in[0].scalar_type();
  std::vector<at::Tensor> hidden;
  for (size_t l = 0; l < hidden_in.size(); ++l) {
    const at::Tensor& h = hidden_in[l];
    TORCH_CHECK(h.dim() == 3 && h.size(0) == B && h.size(1) == T && h.size(2) > 0, "mpruner._token_hsic_fused: hidden[",
                l, "] must be (B, T, D) = (", B, ", ", T, ", D>0), got ", h.sizes());
    TORCH_CHECK(h.scalar_type() == dtype, "mpruner._token_hsic_fused: hidden[", l, "] is ", h.scalar_type(),
                " but hidden[0] is ", dtype, "; pass one dtype");
    TORCH_CHECK(at::isFloatingType(dtype), "mpruner._token_hsic_fused: hidden must be floating point, got ", dtype);
    check_same_device(h, positions_in, "a hidden state", "positions");
    // Only the feature dimension must be dense; batch and token strides are free.
    hidden.push_back(h.stride(2) == 1 ? h : h.contiguous());
  }
  at::Tensor positions = positions_in.to(at::kLong).contiguous();
  at::Tensor lengths = lengths_in.to(at::kLong).contiguous();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= T, "mpruner._token_hsic_fused: lengths[", b, "]=", len[b], " is outside [0, ",
                T, "]");
    for (int64_t i = 0; i < len[b]; ++i)
      TORCH_CHECK(pos[b * T + i] >= 0 && pos[b * T + i] < T, "mpruner._token_hsic_fused: positions[", b, ", ", i,
                  "]=", pos[b * T + i], " is outside [0, ", T, ")");
  }
  TORCH_CHECK(max_gram_bytes > 0, "mpruner._token_hsic_fused: max_gram_bytes must be > 0, got ", max_gram_bytes);
  const int64_t L = static_cast<int64_t>(hidden.size());
  at::Tensor out = at::empty({B, L, L}, positions.options().dtype(at::kDouble));
  if (B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mpruner_token_hsic_fused_cpu", [&] {
    if (dtype == at::kDouble) {
      fused_kernel<scalar_t, double>(hidden, positions, lengths, unbiased, max_gram_bytes, out);
    } else {
      fused_kernel<scalar_t, float>(hidden, positions, lengths, unbiased, max_gram_bytes, out);
    }
  });
  return out;
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_token_hsic_fused", &mpruner::token_hsic_fused_cpu);
}

// CPU kernel for _cosine_sums: for every selected token, the cosine between the hidden
// states of every pair of K tensors, summed over tokens in float64, with the sum of the
// angular distances arccos(cos)/pi beside it. One fused pass: each token's K vectors
// are read once into a float64 buffer, their K(K+1)/2 dot products taken while it is in
// cache; nothing of size (N, K, K) is written. Tokens are split over threads, each with
// its own K x K sums, added at the end (a fixed order: the result does not depend on timing).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "mpruner/similarity_math.h"

namespace mpruner {
namespace {

template <typename scalar_t>
void cosine_sums_kernel(const std::vector<at::Tensor>& hidden, const int64_t* rows, int64_t N, int64_t T,
                        double* cos_out, double* ang_out) {
  const int64_t K = static_cast<int64_t>(hidden.size());
  const int64_t D = hidden[0].size(2);
  const int64_t P = sim::pair_count(K);
  std::vector<int64_t> pa(P), pb(P);
  for (int64_t p = 0; p < P; ++p) sim::pair_at(p, K, &pa[p], &pb[p]);
  // Fixed chunks of tokens, so the float64 partial sums add up in the same order every run.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(256, (N + 63) / 64));
  const int64_t chunks = (N + chunk - 1) / chunk;
  std::vector<double> partial(chunks * 2 * P, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<double> x(K * D), dots(P);
    std::vector<const scalar_t*> base(K);
    for (int64_t k = 0; k < K; ++k) base[k] = hidden[k].data_ptr<scalar_t>();
    for (int64_t c = c0; c < c1; ++c) {
      double* cs = partial.data() + c * 2 * P;
      double* as = cs + P;
      for (int64_t i = c * chunk; i < std::min(N, (c + 1) * chunk); ++i) {
        for (int64_t k = 0; k < K; ++k) {
          const at::Tensor& h = hidden[k];
          const scalar_t* src = base[k] + sim::token_offset(rows[i], T, h.stride(0), h.stride(1));
          double* dst = x.data() + k * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<double>(src[d]);
        }
        for (int64_t p = 0; p < P; ++p) {
          const double* u = x.data() + pa[p] * D;
          const double* v = x.data() + pb[p] * D;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < D; ++d) s += u[d] * v[d];
          dots[p] = s;
        }
        for (int64_t p = 0; p < P; ++p) {
          // Squared norms are the diagonal pairs: pair (a, a) is at index a*K - a(a-1)/2.
          const int64_t a = pa[p], b = pb[p];
          const double c_ab = sim::cosine_from_dots(dots[p], dots[a * K - a * (a - 1) / 2],
                                                    dots[b * K - b * (b - 1) / 2]);
          cs[p] += c_ab;
          as[p] += sim::angular_from_cosine(c_ab);
        }
      }
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    const double* cs = partial.data() + c * 2 * P;
    for (int64_t p = 0; p < P; ++p) {
      cos_out[pa[p] * K + pb[p]] += cs[p];
      ang_out[pa[p] * K + pb[p]] += cs[P + p];
    }
  }
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = 0; b < a; ++b) {
      cos_out[a * K + b] = cos_out[b * K + a];
      ang_out[a * K + b] = ang_out[b * K + a];
    }
}

std::tuple<at::Tensor, at::Tensor> cosine_sums_cpu(at::TensorList hidden_in, const at::Tensor& rows_in) {
  TORCH_CHECK(!hidden_in.empty(), "mpruner._cosine_sums: hidden must hold at least one (B, T, D) tensor");
  const at::Tensor& h0 = hidden_in[0];
  TORCH_CHECK(h0.dim() == 3, "mpruner._cosine_sums: hidden[0] must be (B, T, D), got ", h0.sizes());
  const auto dtype = h0.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "mpruner._cosine_sums: hidden must be float32 or "
              "float64 (the Python wrapper converts half types), got ", dtype);
  std::vector<at::Tensor> hidden;
  for (size_t k = 0; k < hidden_in.size(); ++k) {
    const at::Tensor& h = hidden_in[k];
    TORCH_CHECK(h.sizes() == h0.sizes(), "mpruner._cosine_sums: hidden[", k, "] has shape ", h.sizes(),
                " but hidden[0] has ", h0.sizes(), "; cosine compares vectors of one width on the same tokens");
    TORCH_CHECK(h.scalar_type() == dtype, "mpruner._cosine_sums: hidden[", k, "] is ", h.scalar_type(),
                " but hidden[0] is ", dtype, "; pass one dtype");
    check_same_device(h, rows_in, "a hidden state", "rows");
    hidden.push_back(h.stride(2) == 1 ? h : h.contiguous());
  }
  TORCH_CHECK(rows_in.dim() == 1, "mpruner._cosine_sums: rows must be (N,) token indices into B*T, got ",
              rows_in.sizes());
  at::Tensor rows = rows_in.to(at::kLong).contiguous();
  const int64_t N = rows.size(0), B = h0.size(0), T = h0.size(1), K = static_cast<int64_t>(hidden.size());
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK(r[i] >= 0 && r[i] < B * T, "mpruner._cosine_sums: rows[", i, "]=", r[i], " is outside [0, B*T=",
                B * T, ")");
  auto opts = rows.options().dtype(at::kDouble);
  at::Tensor cos_sum = at::zeros({K, K}, opts), ang_sum = at::zeros({K, K}, opts);
  if (N == 0 || h0.size(2) == 0) return {cos_sum, ang_sum};
  AT_DISPATCH_FLOATING_TYPES(dtype, "mpruner_cosine_sums_cpu", [&] {
    cosine_sums_kernel<scalar_t>(hidden, r, N, T, cos_sum.data_ptr<double>(), ang_sum.data_ptr<double>());
  });
  return {cos_sum, ang_sum};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_cosine_sums", &mpruner::cosine_sums_cpu);
}

// CPU kernels for the elementwise Gram transforms: centering and RBF.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"

namespace mpruner {
namespace {

at::Tensor center_apply_cpu(const at::Tensor& k_in, const at::Tensor& rowsums_in, const at::Tensor& totals_in,
                            bool unbiased) {
  check_center_args(k_in, rowsums_in, totals_in);
  const int64_t B = k_in.size(0), n = k_in.size(1);
  at::Tensor k = k_in.contiguous();
  at::Tensor r = rowsums_in.to(at::kDouble).contiguous();
  at::Tensor s = totals_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(k);
  if (k.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(k.scalar_type(), "mpruner_center_apply_cpu", [&] {
    const scalar_t* src = k.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const double* rp = r.data_ptr<double>();
    const double* sp = s.data_ptr<double>();
    at::parallel_for(0, B * n, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / n, i = row % n;
        const double g = math::grand_term(sp[b], n, unbiased);
        const double scale = math::row_scale(n, unbiased);
        const double ti = rp[b * n + i] * scale;
        for (int64_t j = 0; j < n; ++j) {
          const double tj = rp[b * n + j] * scale;
          dst[row * n + j] = static_cast<scalar_t>(
              math::centered_entry(static_cast<double>(src[row * n + j]), ti, tj, g, i == j, unbiased));
        }
      }
    });
  });
  return out;
}

at::Tensor rbf_apply_cpu(const at::Tensor& g_in, const at::Tensor& diag_in, const at::Tensor& inv_in) {
  check_rbf_args(g_in, diag_in, inv_in);
  const int64_t B = g_in.size(0), n = g_in.size(1);
  at::Tensor g = g_in.contiguous();
  at::Tensor diag = diag_in.to(at::kDouble).contiguous();
  at::Tensor inv = inv_in.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(g);
  if (g.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "mpruner_rbf_apply_cpu", [&] {
    const scalar_t* src = g.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const double* dp = diag.data_ptr<double>();
    const double* ip = inv.data_ptr<double>();
    at::parallel_for(0, B * n, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / n;
        const double* d = dp + b * n;  // the squared norms, contiguous: no strided gather per element
        const double gii = dp[row];
        for (int64_t j = 0; j < n; ++j)
          dst[row * n + j] = static_cast<scalar_t>(math::rbf_entry(static_cast<double>(src[row * n + j]), gii, d[j], ip[b]));
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_center_apply", &mpruner::center_apply_cpu);
  m.impl("_rbf_apply", &mpruner::rbf_apply_cpu);
}

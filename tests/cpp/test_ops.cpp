// Checks mpruner's operators from C++ (through the dispatcher, as a libtorch user
// would call them) against values computed here with plain loops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <tuple>
#include <vector>

#include "mpruner/hsic_math.h"

namespace {

int failures = 0;

void check_close(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.12g want %.12g\n", what, got, want);
    ++failures;
  }
}

using Mat = std::vector<std::vector<double>>;

// Gram of x (n, d) double with each feature minus its mean (first_row=false) or minus the
// first sample's value (first_row=true: the shift grams takes when none is given).
Mat linear_gram(const at::Tensor& x, bool first_row = false) {
  const int64_t n = x.size(0), d = x.size(1);
  auto a = x.accessor<double, 2>();
  std::vector<double> base(d, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < d; ++k) base[k] = first_row ? a[0][k] : base[k] + a[i][k] / n;
  Mat g(n, std::vector<double>(n, 0.0));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < d; ++k) g[i][j] += (a[i][k] - base[k]) * (a[j][k] - base[k]);
  return g;
}

// HSIC by explicit centering (biased) or Song et al.'s formula (unbiased).
double naive_hsic(const Mat& k, const Mat& l, bool unbiased) {
  const int64_t n = k.size();
  if (!unbiased) {
    auto center = [n](const Mat& m) {
      std::vector<double> r(n, 0.0);
      double s = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) r[i] += m[i][j], s += m[i][j];
      Mat c = m;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) c[i][j] = m[i][j] - r[i] / n - r[j] / n + s / (n * n);
      return c;
    };
    Mat a = center(k), b = center(l);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) acc += a[i][j] * b[i][j];
    return acc / ((n - 1.0) * (n - 1.0));
  }
  double tr = 0, sk = 0, sl = 0, kl = 0;
  std::vector<double> rk(n, 0.0), rl(n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (i != j) {
        tr += k[i][j] * l[i][j];
        sk += k[i][j];
        sl += l[i][j];
        rk[i] += k[i][j];
        rl[i] += l[i][j];
      }
  for (int64_t i = 0; i < n; ++i) kl += rk[i] * rl[i];
  return (tr + sk * sl / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * kl) / (n * (n - 3.0));
}

at::Tensor to_tensor(const std::vector<Mat>& gs) {
  const int64_t L = gs.size(), n = gs[0].size();
  at::Tensor t = at::empty({L, n, n}, at::kDouble);
  auto a = t.accessor<double, 3>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) a[l][i][j] = gs[l][i][j];
  return t;
}

void test_hsic_matrix_and_grams() {
  at::manual_seed(7);
  const int64_t n = 13;
  std::vector<at::Tensor> xs = {at::randn({n, 4}, at::kDouble) + 2.0, at::randn({n, 6}, at::kDouble)};
  xs.push_back(xs[0].mm(at::randn({4, 5}, at::kDouble)) + 0.3 * at::randn({n, 5}, at::kDouble));
  std::vector<Mat> gs;
  for (auto& x : xs) gs.push_back(linear_gram(x));

  static auto grams_op = c10::Dispatcher::singleton().findSchemaOrThrow("mpruner::grams", "")
                             .typed<at::Tensor(at::TensorList, c10::string_view, double, bool, c10::string_view,
                                               int64_t)>();
  static auto shifted_op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mpruner::grams_shifted", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const std::optional<at::Tensor>&,
                                                    c10::string_view, double, bool, c10::string_view, int64_t)>();
  static auto hsic_op = c10::Dispatcher::singleton().findSchemaOrThrow("mpruner::hsic_matrix", "")
                            .typed<at::Tensor(const at::Tensor&, bool)>();
  // grams: each layer shifted by its first row (HSIC is invariant to the shift).
  at::Tensor g = grams_op.call(xs, "linear", 0.5, false, "highest", 0);
  auto ga = g.accessor<double, 3>();
  for (int l = 0; l < 3; ++l) {
    Mat want = linear_gram(xs[l], /*first_row=*/true);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) check_close(ga[l][i][j], want[i][j], 1e-12, "grams");
  }
  // grams_shifted by the exact column means: the centered Grams, and column sums of ~0.
  std::vector<at::Tensor> means;
  for (auto& x : xs) means.push_back(x.mean(0));
  auto shifted = shifted_op.call(xs, at::cat(means), "linear", 0.5, false, "highest", 0);
  auto sa = std::get<0>(shifted).accessor<double, 3>();
  for (int l = 0; l < 3; ++l)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) check_close(sa[l][i][j], gs[l][i][j], 1e-12, "grams_shifted");
  auto colsums = std::get<1>(shifted).accessor<double, 1>();
  for (int64_t k = 0; k < colsums.size(0); ++k) check_close(colsums[k], 0.0, 1e-12, "grams_shifted column sums");
  for (bool unbiased : {false, true}) {
    at::Tensor h = hsic_op.call(to_tensor(gs), unbiased);
    auto ha = h.accessor<double, 2>();
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b)
        check_close(ha[a][b], naive_hsic(gs[a], gs[b], unbiased), 1e-10, unbiased ? "hsic_matrix unbiased" : "hsic_matrix");
  }
}

void test_token_hsic() {
  at::manual_seed(11);
  const int64_t L = 2, B = 3, T = 9;
  std::vector<int64_t> lens = {9, 5, 7};
  at::Tensor grams = at::full({L, B, T, T}, NAN, at::kDouble);  // padding must never be read
  std::vector<std::vector<Mat>> per_seq(B);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) {
      Mat g = linear_gram(at::randn({lens[b], 3}, at::kDouble) * (l + 1.0) + 1.0);
      per_seq[b].push_back(g);
      for (int64_t i = 0; i < lens[b]; ++i)
        for (int64_t j = 0; j < lens[b]; ++j) grams[l][b][i][j] = g[i][j];
    }
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mpruner::token_hsic", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool)>();
  at::Tensor h = op.call(grams, at::tensor(lens, at::kLong), true);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t x = 0; x < L; ++x)
      for (int64_t y = 0; y < L; ++y)
        check_close(h[b][x][y].item<double>(), naive_hsic(per_seq[b][x], per_seq[b][y], true), 1e-10, "token_hsic");
}

void test_shared_math() {
  // One-pass HSIC from sums equals HSIC of explicitly centered matrices.
  Mat k = {{2, 1, 0, 1}, {1, 3, 1, 0}, {0, 1, 4, 2}, {1, 0, 2, 5}};
  Mat l = {{1, 0, 2, 1}, {0, 2, 1, 1}, {2, 1, 3, 0}, {1, 1, 0, 2}};
  for (bool unbiased : {false, true}) {
    double p = 0, rr = 0, sk = 0, sl = 0;
    std::vector<double> rk(4, 0), rl(4, 0);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        if (mpruner::math::entry_counts(i, j, unbiased)) {
          p += k[i][j] * l[i][j];
          rk[i] += k[i][j];
          rl[i] += l[i][j];
        }
    for (int i = 0; i < 4; ++i) rr += rk[i] * rl[i], sk += rk[i], sl += rl[i];
    check_close(mpruner::math::hsic_from_sums(p, rr, sk, sl, 4, unbiased), naive_hsic(k, l, unbiased), 1e-12,
                "hsic_from_sums");
  }
  check_close(mpruner::math::rbf_entry(1.0, 2.0, 3.0, 0.25), std::exp(-0.75), 1e-15, "rbf_entry");
  check_close(mpruner::math::rbf_entry(1.0, 1.0, 1.0 - 1e-17, 0.25), 1.0, 1e-15, "rbf_entry clamps rounding");
  const double nan = std::nan("");
  if (!std::isnan(mpruner::math::rbf_entry(nan, 1.0, 1.0, 0.25)) || !std::isnan(mpruner::math::rbf_entry(1.0, nan, 1.0, 0.0)))
    std::printf("FAIL: rbf_entry must keep a NaN distance NaN\n"), ++failures;
  // The fused epilogue's helpers.
  if (mpruner::math::is_finite(nan) || mpruner::math::is_finite(INFINITY) || !mpruner::math::is_finite(-3.5))
    std::printf("FAIL: is_finite\n"), ++failures;
  if (mpruner::math::first_bad_batch(-1, nan, 7) != 7 || mpruner::math::first_bad_batch(3, nan, 7) != 3 ||
      mpruner::math::first_bad_batch(-1, 2.0, 7) != -1)
    std::printf("FAIL: first_bad_batch\n"), ++failures;
  check_close(mpruner::math::degeneracy_threshold(3.0, 2.0), 36.0, 1e-15, "degeneracy_threshold");
}

}  // namespace

int main() {
  test_shared_math();
  test_hsic_matrix_and_grams();
  test_token_hsic();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all mpruner C++ op checks passed\n");
  return 0;
}

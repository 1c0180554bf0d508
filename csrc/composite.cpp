// Device-agnostic compositions: ATen for the GEMMs and small reductions, the
// backend kernels (_hsic_partials, _center_apply, _rbf_apply) for the rest.
// Registered as CompositeImplicitAutograd, so torch.compile and fake tensors see
// through them to the kernels' fake implementations.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <numeric>
#include <vector>

#include "mpruner/checks.h"
#include "mpruner/hsic_math.h"

namespace mpruner {
namespace {

std::tuple<at::Tensor, at::Tensor> hsic_partials(const at::Tensor& grams, const std::optional<at::Tensor>& lengths,
                                                 bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_hsic_partials", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&, bool)>();
  return op.call(grams, lengths, unbiased);
}

at::Tensor center_apply(const at::Tensor& k, const at::Tensor& rowsums, const at::Tensor& totals, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_center_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(k, rowsums, totals, unbiased);
}

at::Tensor rbf_apply(const at::Tensor& g, const at::Tensor& diag, const at::Tensor& inv_two_sigma2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_rbf_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(g, diag, inv_two_sigma2);
}

at::Tensor rbf_bandwidths(const at::Tensor& g, double sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_rbf_bandwidths", "")
                       .typed<at::Tensor(const at::Tensor&, double, c10::string_view)>();
  return op.call(g, sigma, "auto");
}

void check_min_samples(int64_t n, bool unbiased, const char* what) {
  int64_t need = unbiased ? 4 : 2;
  TORCH_CHECK(n >= need, "mpruner: ", what, " has n=", n, " samples; the ",
              unbiased ? "unbiased" : "biased", " estimator needs n >= ", need,
              unbiased ? " (use unbiased=False or larger batches)" : " (use larger batches)");
}

// Whether ATen calls on x may run on worker threads: a real CPU tensor outside
// autograd, functorch and Python dispatch (fake tensors, modes), whose handlers
// expect the calling thread.
bool plain_cpu_tensor(const at::Tensor& x) {
  const auto ks = x.key_set();
  const bool wrapped = ks.has(c10::DispatchKey::Python) || ks.has(c10::DispatchKey::Functionalize) ||
                       ks.has(c10::DispatchKey::FuncTorchBatched) || ks.has(c10::DispatchKey::FuncTorchGradWrapper);
  const bool mode = c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python) ||
                    c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
  return x.is_cpu() && !x.requires_grad() && !wrapped && !mode;
}

// HSIC from the kernel's sums, vectorised over (B, L, L); mirrors math::hsic_from_sums.
// n: the lengths as a (B, 1, 1) tensor, or one number for every sequence (hsic_matrix).
template <typename N>
at::Tensor combine_sums_n(const at::Tensor& pairs, const at::Tensor& rowsums, const N& n, bool unbiased) {
  at::Tensor s = rowsums.sum(-1);                                  // (B, L)
  at::Tensor rr = at::bmm(rowsums, rowsums.transpose(1, 2));       // (B, L, L)
  at::Tensor ss = s.unsqueeze(2) * s.unsqueeze(1);                 // (B, L, L)
  if (unbiased) {
    return (pairs + ss / ((n - 1) * (n - 2)) - rr * (2.0 / (n - 2))) / (n * (n - 3));
  }
  return (pairs - rr * (2.0 / n) + ss / (n * n)) / ((n - 1) * (n - 1));
}

at::Tensor combine_sums(const at::Tensor& pairs, const at::Tensor& rowsums, const at::Tensor& lengths, bool unbiased) {
  return combine_sums_n(pairs, rowsums, lengths.to(at::kDouble).view({-1, 1, 1}), unbiased);
}

at::Tensor combine_sums(const at::Tensor& pairs, const at::Tensor& rowsums, int64_t n, bool unbiased) {
  return combine_sums_n(pairs, rowsums, static_cast<double>(n), unbiased);
}

// The device path (every backend but the CPU's per-layer one): batched, a fixed
// number of ATen calls per width group. MPRUNER_ENGINE_PATH=device routes CPU
// tensors through it too, so that CPU tests check the composite the GPU runs.
bool device_path(const at::Tensor& x) {
  if (!x.is_cpu()) return true;
  const char* v = std::getenv("MPRUNER_ENGINE_PATH");
  return v != nullptr && std::string(v) == "device";
}

std::tuple<at::Tensor, at::Tensor> shift_features(at::TensorList xs, const c10::optional<at::Tensor>& shift,
                                                  at::ScalarType dtype, c10::string_view split) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_shift_features", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const c10::optional<at::Tensor>&,
                                                                 at::ScalarType, c10::string_view)>();
  return op.call(xs, shift, dtype, split);
}

std::tuple<at::Tensor, at::Tensor> layer_grams(at::TensorList xs, const c10::optional<at::Tensor>& shift,
                                               c10::string_view split, int64_t block) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_layer_grams", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(at::TensorList, const c10::optional<at::Tensor>&,
                                                                 c10::string_view, int64_t)>();
  return op.call(xs, shift, split, block);
}

// How a precision mode forms the GEMM: the split of the shifted values and the dtype
// they are stored in. CPU: "high" is the two-term bfloat16 split, "medium" bfloat16-
// rounded values, both stored in float32 for the matrix engine that torch's mkldnn
// bf16 matmul mode selects (exact: the values are bfloat16 already). CUDA: "high" is
// float32 under TF32, "medium" bfloat16 storage with float32 output. float64 is exact.
struct GemmForm {
  const char* split;
  at::ScalarType storage;
};

GemmForm gemm_form(c10::string_view precision, at::ScalarType dtype, bool cuda) {
  TORCH_CHECK(precision == "highest" || precision == "high" || precision == "medium",
              "mpruner.grams: precision must be 'highest', 'high' or 'medium', got '", std::string(precision), "'");
  if (dtype == at::kDouble || precision == "highest") return {"none", dtype};
  if (cuda) return {"none", precision == "medium" ? at::kBFloat16 : at::kFloat};
  return {precision == "high" ? "hilo" : "round", at::kFloat};
}

// Rows [r0, r1) of the batched Grams a b^T (G, n, k) into out (G, n, n), as
// gram_rows_into: block 0 one product, block b > 0 block rows against the columns from
// their first row on. bfloat16 operands give float32 Grams (CUDA).
void batched_gram_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, int64_t block) {
  const int64_t n = a.size(1);
  auto product = [&](at::Tensor& dst, const at::Tensor& x, const at::Tensor& y) {
    if (x.scalar_type() == dst.scalar_type()) {
      at::bmm_out(dst, x, y.transpose(1, 2));
    } else {
      at::bmm_out(dst, x, y.transpose(1, 2), dst.scalar_type());
    }
  };
  // bfloat16 operands (CUDA "medium") take one full product into the contiguous output: the
  // dtype-converting bmm is not asked to write strided block-row views.
  if (block <= 0 || block >= n || a.scalar_type() != out.scalar_type()) {
    product(out, a, b);
    return;
  }
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t rows = std::min(block, n - r0);
    at::Tensor dst = out.narrow(1, r0, rows).narrow(2, r0, n - r0);
    product(dst, a.narrow(1, r0, rows), b.narrow(1, r0, n - r0));
  }
}

std::tuple<at::Tensor, at::Tensor> grams_shifted_impl(at::TensorList xs, const c10::optional<at::Tensor>& shift,
                                                      c10::string_view kernel, double sigma, bool triangular,
                                                      c10::string_view precision, int64_t block) {
  TORCH_CHECK(!xs.empty(), "mpruner.grams: xs is empty; pass at least one (n, d) tensor");
  TORCH_CHECK(kernel == "linear" || kernel == "rbf", "mpruner.grams: kernel must be 'linear' or 'rbf', got '",
              std::string(kernel), "'");
  TORCH_CHECK(block >= -1, "mpruner.grams: block must be -1 (default), 0 (full product) or a row count, got ", block);
  const int64_t n = xs[0].size(0);
  auto dtype = at::kFloat;
  for (size_t l = 0; l < xs.size(); ++l) {
    const auto& x = xs[l];
    TORCH_CHECK(x.dim() == 2, "mpruner.grams: xs[", l, "] must be 2-D (n, d), got shape ", x.sizes());
    TORCH_CHECK(at::isFloatingType(x.scalar_type()), "mpruner.grams: xs[", l, "] must be floating point, got ",
                x.scalar_type());
    TORCH_CHECK(x.size(0) == n, "mpruner.grams: xs[", l, "] has ", x.size(0), " samples but xs[0] has ", n,
                "; every layer needs the same samples");
    TORCH_CHECK(x.size(1) > 0 && n > 0, "mpruner.grams: xs[", l, "] is empty (shape ", x.sizes(), ")");
    check_same_device(x, xs[0], "a layer", "xs[0]");
    if (x.scalar_type() == at::kDouble) dtype = at::kDouble;
  }
  const int64_t L = static_cast<int64_t>(xs.size());
  const GemmForm form = gemm_form(precision, dtype, xs[0].is_cuda());
  if (!triangular) block = 0;  // every entry is wanted: one full product
  std::vector<at::Tensor> cast;
  cast.reserve(L);
  for (const auto& x : xs) cast.push_back(x.to(dtype));
  at::Tensor out, colsums;
  // The shift moves features near their mean in the pass that forms the GEMM's input, so
  // float32 Grams stay accurate when activations share a large offset; HSIC ignores it.
  if (!device_path(xs[0]) && std::all_of(xs.begin(), xs.end(), plain_cpu_tensor)) {
    // CPU: per-layer Grams in cache, threads over layers (and rows for the last ones).
    std::tie(out, colsums) = layer_grams(cast, shift, form.split, block);
  } else {
    // Each run of consecutive layers of one width (a transformer's blocks, a CNN's stage):
    // one multi-tensor shift (one launch on CUDA) into the stacked GEMM input, then batched
    // GEMMs written straight into the run's slice of the output. A handful of launches per
    // run whatever its length.
    out = at::empty({L, n, n}, xs[0].options().dtype(dtype));
    std::vector<at::Tensor> sums;
    int64_t offset = 0;
    for (int64_t g0 = 0; g0 < L;) {
      int64_t g1 = g0;
      while (g1 < L && xs[g1].size(1) == xs[g0].size(1)) ++g1;
      const int64_t d = xs[g0].size(1), count = g1 - g0;
      std::vector<at::Tensor> group(cast.begin() + g0, cast.begin() + g1);
      c10::optional<at::Tensor> part;
      if (shift.has_value() && shift->defined()) part = shift->narrow(0, offset, count * d);
      auto shifted = shift_features(group, part, form.storage, form.split);
      const at::Tensor& xc = std::get<0>(shifted);
      const bool hilo = std::string(form.split) == "hilo";
      at::Tensor a = hilo ? xc.narrow(2, 0, 3 * d) : xc, b = hilo ? xc.narrow(2, d, 3 * d) : xc;
      at::Tensor dst = out.narrow(0, g0, count);
      // Default block rows for batched GEMMs: about 8 launches, flops (1 + b/n)/2 of the full product.
      const int64_t rows = block >= 0 ? block : std::max<int64_t>(128, (n / 8 + 63) / 64 * 64);
      batched_gram_into(dst, a, b, rows);
      sums.push_back(std::get<1>(shifted));
      offset += count * d;
      g0 = g1;
    }
    colsums = sums.size() == 1 ? sums[0] : at::cat(sums);
  }
  if (kernel == "rbf") {
    TORCH_CHECK(n >= 2, "mpruner.grams: the RBF kernel needs n >= 2 samples, got ", n);
    TORCH_CHECK(sigma > 0, "mpruner.grams: sigma must be > 0, got ", sigma);
    at::Tensor inv = rbf_bandwidths(out, sigma);  // csrc/rbf_bandwidth.cpp
    out = rbf_apply(out, out.diagonal(0, 1, 2).to(at::kDouble), inv);
  }
  return {out, colsums};
}

at::Tensor grams_impl(at::TensorList xs, c10::string_view kernel, double sigma, bool triangular,
                      c10::string_view precision, int64_t block) {
  return std::get<0>(grams_shifted_impl(xs, c10::nullopt, kernel, sigma, triangular, precision, block));
}

at::Tensor center_gram_impl(const at::Tensor& k, bool unbiased) {
  check_square_last(k, "center_gram: k");
  TORCH_CHECK(at::isFloatingType(k.scalar_type()), "mpruner.center_gram: k must be floating point, got ",
              k.scalar_type());
  const int64_t n = k.size(-1);
  check_min_samples(n, unbiased, "center_gram: k");
  auto work_dtype = k.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor kb = k.to(work_dtype).reshape({-1, n, n}).contiguous();
  at::Tensor rowsums = kb.sum(-1, /*keepdim=*/false, at::kDouble);
  if (unbiased) rowsums = rowsums - kb.diagonal(0, 1, 2).to(at::kDouble);
  at::Tensor totals = rowsums.sum(-1);
  return center_apply(kb, rowsums, totals, unbiased).view(k.sizes());
}

at::Tensor hsic_matrix_impl(const at::Tensor& grams, bool unbiased) {
  TORCH_CHECK(grams.dim() == 3, "mpruner.hsic_matrix: grams must be (L, n, n), got shape ", grams.sizes());
  check_square_last(grams, "hsic_matrix: grams");
  TORCH_CHECK(grams.size(0) > 0, "mpruner.hsic_matrix: grams holds no layer (L=0)");
  const int64_t n = grams.size(-1);
  check_min_samples(n, unbiased, "hsic_matrix: grams");
  at::Tensor g = grams.scalar_type() == at::kDouble ? grams : grams.to(at::kFloat);
  // No lengths: nothing to check or read back (the accumulator's update() never waits).
  auto partials = hsic_partials(g.unsqueeze(1).contiguous(), std::nullopt, unbiased);
  return combine_sums(std::get<0>(partials), std::get<1>(partials), n, unbiased).squeeze(0);
}

at::Tensor token_hsic_impl(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased) {
  TORCH_CHECK(grams.dim() == 4, "mpruner.token_hsic: grams must be (L, B, T, T), got shape ", grams.sizes());
  check_square_last(grams, "token_hsic: grams");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == grams.size(1), "mpruner.token_hsic: lengths must be (B,) with B=",
              grams.size(1), ", got shape ", lengths.sizes());
  check_same_device(grams, lengths, "grams", "lengths");
  // lengths are checked by _hsic_partials (every backend, one read on a device), before use here.
  at::Tensor g = grams.scalar_type() == at::kDouble ? grams : grams.to(at::kFloat);
  auto partials = hsic_partials(g.contiguous(), lengths.to(at::kLong), unbiased);
  return combine_sums(std::get<0>(partials), std::get<1>(partials), lengths, unbiased);
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CompositeImplicitAutograd, m) {
  m.impl("grams", &mpruner::grams_impl);
  m.impl("grams_shifted", &mpruner::grams_shifted_impl);
  m.impl("center_gram", &mpruner::center_gram_impl);
  m.impl("hsic_matrix", &mpruner::hsic_matrix_impl);
  m.impl("token_hsic", &mpruner::token_hsic_impl);
}

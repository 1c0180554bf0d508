// Device-agnostic compositions: ATen for the GEMMs and small reductions, the
// backend kernels (_hsic_partials, _center_apply, _rbf_apply) for the rest.
// Registered as CompositeImplicitAutograd, so torch.compile and fake tensors see
// through them to the kernels' fake implementations.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "mpruner/checks.h"
#include "mpruner/triangular_gram.h"

namespace mpruner {
namespace {

std::tuple<at::Tensor, at::Tensor> hsic_partials(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_hsic_partials", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grams, lengths, unbiased);
}

at::Tensor center_apply(const at::Tensor& k, const at::Tensor& rowsums, const at::Tensor& totals, bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_center_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(k, rowsums, totals, unbiased);
}

at::Tensor rbf_apply(const at::Tensor& g, const at::Tensor& inv_two_sigma2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mpruner::_rbf_apply", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(g, inv_two_sigma2);
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
at::Tensor combine_sums(const at::Tensor& pairs, const at::Tensor& rowsums, const at::Tensor& lengths, bool unbiased) {
  at::Tensor s = rowsums.sum(-1);                                  // (B, L)
  at::Tensor rr = at::bmm(rowsums, rowsums.transpose(1, 2));       // (B, L, L)
  at::Tensor ss = s.unsqueeze(2) * s.unsqueeze(1);                 // (B, L, L)
  at::Tensor n = lengths.to(at::kDouble).view({-1, 1, 1});
  if (unbiased) {
    return (pairs + ss / ((n - 1) * (n - 2)) - rr * (2.0 / (n - 2))) / (n * (n - 3));
  }
  return (pairs - rr * (2.0 / n) + ss / (n * n)) / ((n - 1) * (n - 1));
}

at::Tensor grams_impl(at::TensorList xs, c10::string_view kernel, double sigma, bool triangular) {
  TORCH_CHECK(!xs.empty(), "mpruner.grams: xs is empty; pass at least one (n, d) tensor");
  TORCH_CHECK(kernel == "linear" || kernel == "rbf", "mpruner.grams: kernel must be 'linear' or 'rbf', got '",
              std::string(kernel), "'");
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
  at::Tensor out = at::empty({L, n, n}, xs[0].options().dtype(dtype));
  // Centering the features first keeps float32 Grams accurate when activations
  // share a large common offset; HSIC is invariant to it.
  if (triangular && xs[0].is_cpu()) {
    // CPU: upper-triangle block-row GEMMs (about half the work). With enough layers
    // to go round, each thread takes whole layers: it centers one into a buffer it
    // reuses and runs that layer's GEMMs single-threaded while the data is in its
    // cache, instead of both threads meeting at a barrier after every small GEMM.
    const int64_t nthreads = at::get_num_threads();
    const bool per_layer = L >= nthreads && nthreads > 1 && !at::in_parallel_region() &&
                           std::all_of(xs.begin(), xs.end(), plain_cpu_tensor);
    const at::ThreadLocalState state;  // grad/inference mode etc. of the caller, for the workers
    at::parallel_for(0, L, per_layer ? 1 : L, [&](int64_t l0, int64_t l1) {
      at::ThreadLocalStateGuard guard(state);
      at::Tensor xc;
      for (int64_t l = l0; l < l1; ++l) {
        at::Tensor x = xs[l].to(dtype);
        if (!xc.defined() || xc.sizes() != x.sizes()) xc = at::empty_like(x, at::MemoryFormat::Contiguous);
        at::sub_out(xc, x, x.mean(0, /*keepdim=*/true));
        at::Tensor dst = out.select(0, l);
        triangular_gram_into(dst, xc);
      }
    });
  } else {
    // Layers of one width share a batched GEMM (few launches on GPUs); centering
    // writes straight into the stacked GEMM input, so it costs no extra copy.
    std::vector<int64_t> order(L);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return xs[a].size(1) < xs[b].size(1); });
    for (int64_t g0 = 0; g0 < L;) {
      int64_t g1 = g0;
      while (g1 < L && xs[order[g1]].size(1) == xs[order[g0]].size(1)) ++g1;
      at::Tensor xc = at::empty({g1 - g0, n, xs[order[g0]].size(1)}, out.options());
      for (int64_t k = g0; k < g1; ++k) {
        at::Tensor x = xs[order[k]].to(dtype);
        at::Tensor slot = xc.select(0, k - g0);
        at::sub_out(slot, x, x.mean(0, /*keepdim=*/true));
      }
      bool in_place = (g1 - g0 == L);  // one width: write the output directly
      if (in_place) {
        at::bmm_out(out, xc, xc.transpose(1, 2));
      } else {
        at::Tensor part = at::bmm(xc, xc.transpose(1, 2));
        for (int64_t k = g0; k < g1; ++k) out.select(0, order[k]).copy_(part.select(0, k - g0));
      }
      g0 = g1;
    }
  }
  if (kernel == "rbf") {
    TORCH_CHECK(n >= 2, "mpruner.grams: the RBF kernel needs n >= 2 samples, got ", n);
    TORCH_CHECK(sigma > 0, "mpruner.grams: sigma must be > 0, got ", sigma);
    at::Tensor iu = at::triu_indices(n, n, 1, out.options().dtype(at::kLong));
    at::Tensor rows = iu.select(0, 0), cols = iu.select(0, 1);
    at::Tensor diag = out.diagonal(0, 1, 2).to(at::kDouble);           // (L, n)
    at::Tensor upper = out.index({at::indexing::Slice(), rows, cols}).to(at::kDouble);
    at::Tensor d2 = (diag.index_select(1, rows) + diag.index_select(1, cols) - 2.0 * upper).clamp_min(0.0);
    at::Tensor med = std::get<0>(d2.median(-1));                        // (L,)
    // All-identical samples (median 0) give a constant kernel, whose HSIC is 0.
    at::Tensor inv = at::where(med > 0, 1.0 / (2.0 * sigma * sigma * med), at::zeros_like(med));
    out = rbf_apply(out, inv);
  }
  return out;
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
  at::Tensor lengths = at::full({1}, n, grams.options().dtype(at::kLong));
  auto partials = hsic_partials(g.unsqueeze(1).contiguous(), lengths, unbiased);
  return combine_sums(std::get<0>(partials), std::get<1>(partials), lengths, unbiased).squeeze(0);
}

at::Tensor token_hsic_impl(const at::Tensor& grams, const at::Tensor& lengths, bool unbiased) {
  TORCH_CHECK(grams.dim() == 4, "mpruner.token_hsic: grams must be (L, B, T, T), got shape ", grams.sizes());
  check_square_last(grams, "token_hsic: grams");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == grams.size(1), "mpruner.token_hsic: lengths must be (B,) with B=",
              grams.size(1), ", got shape ", lengths.sizes());
  check_same_device(grams, lengths, "grams", "lengths");
  at::Tensor g = grams.scalar_type() == at::kDouble ? grams : grams.to(at::kFloat);
  auto partials = hsic_partials(g.contiguous(), lengths.to(at::kLong), unbiased);
  return combine_sums(std::get<0>(partials), std::get<1>(partials), lengths, unbiased);
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CompositeImplicitAutograd, m) {
  m.impl("grams", &mpruner::grams_impl);
  m.impl("center_gram", &mpruner::center_gram_impl);
  m.impl("hsic_matrix", &mpruner::hsic_matrix_impl);
  m.impl("token_hsic", &mpruner::token_hsic_impl);
}

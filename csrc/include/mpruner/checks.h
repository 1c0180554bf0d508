// Argument checks shared by the backend kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mpruner {

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "mpruner: ", name, " must be float32 or float64 (half types are converted by the "
              "Python wrappers), got ", t.scalar_type());
}

inline void check_square_last(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 2 && t.size(-1) == t.size(-2),
              "mpruner: ", name, " must end in two equal dimensions (n, n), got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* an, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "mpruner: ", an, " is on ", a.device(), " but ", bn,
              " is on ", b.device(), "; move both to one device");
}

// lengths[b] must lie in [0, T] before any kernel reads a Gram: checked here, alike on every
// backend (the CUDA kernels index by it; combine_sums divides by it). A CPU tensor is read in
// place; a device tensor costs one small read (only sequences of a given length pay it:
// hsic_matrix passes no lengths); tensors without data (fake, meta) are not read.
inline void check_length_values(const at::Tensor& lengths, int64_t T) {
  const auto ks = lengths.key_set();
  if (lengths.is_meta() || ks.has(c10::DispatchKey::Python) || ks.has(c10::DispatchKey::Functionalize) ||
      c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python) || lengths.numel() == 0)
    return;
  at::Tensor len = lengths.to(at::kLong);
  if (!len.is_cpu()) {
    if (!((len < 0) | (len > T)).any().item<bool>()) return;
    len = len.cpu();
  }
  len = len.contiguous();
  const int64_t* v = len.data_ptr<int64_t>();
  for (int64_t b = 0; b < len.numel(); ++b)
    TORCH_CHECK(v[b] >= 0 && v[b] <= T, "mpruner: lengths[", b, "]=", v[b], " is outside [0, ", T,
                "]; each length counts the valid tokens of its sequence (at most the padded length T)");
}

// Arguments of _hsic_partials, checked alike by every backend. No lengths: every sequence has
// all T entries.
inline void check_partials_args(const at::Tensor& grams, const std::optional<at::Tensor>& lengths) {
  TORCH_CHECK(grams.dim() == 4, "mpruner._hsic_partials: grams must be (L, B, T, T), got ", grams.sizes());
  check_square_last(grams, "_hsic_partials: grams");
  check_float_tensor(grams, "_hsic_partials: grams");
  if (!lengths.has_value()) return;
  check_same_device(grams, *lengths, "grams", "lengths");
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == grams.size(1), "mpruner._hsic_partials: lengths must be (B,) with B=",
              grams.size(1), ", got ", lengths->sizes());
  TORCH_CHECK(!at::isFloatingType(lengths->scalar_type()) && !at::isComplexType(lengths->scalar_type()),
              "mpruner._hsic_partials: lengths must be integers, got ", lengths->scalar_type());
  check_length_values(*lengths, grams.size(2));
}

// _hsic_finish: one batch's sums of L layers and the accumulator's state, all on one device.
inline void check_finish_args(const at::Tensor& pairs, const at::Tensor& rowsums, int64_t n, const at::Tensor& scale,
                              const at::Tensor& index, const at::Tensor& sums, const at::Tensor& thr_sums,
                              const at::Tensor& flags) {
  const int64_t L = pairs.size(0);
  TORCH_CHECK(pairs.dim() == 2 && pairs.size(1) == L && pairs.scalar_type() == at::kDouble,
              "mpruner._hsic_finish: pairs must be (L, L) float64, got ", pairs.sizes(), " ", pairs.scalar_type());
  TORCH_CHECK(rowsums.dim() == 2 && rowsums.size(0) == L && rowsums.size(1) >= n && rowsums.scalar_type() == at::kDouble,
              "mpruner._hsic_finish: rowsums must be (L, T >= n) float64, got ", rowsums.sizes());
  TORCH_CHECK(n >= 2, "mpruner._hsic_finish: n must be >= 2, got ", n);
  TORCH_CHECK(scale.sizes() == at::IntArrayRef({L}) && scale.scalar_type() == at::kDouble,
              "mpruner._hsic_finish: scale must be (L,) float64");
  TORCH_CHECK(index.dim() == 0 && index.scalar_type() == at::kLong, "mpruner._hsic_finish: index must be a 0-d int64");
  TORCH_CHECK(sums.sizes() == pairs.sizes() && sums.scalar_type() == at::kDouble && sums.is_contiguous(),
              "mpruner._hsic_finish: sums must be (L, L) contiguous float64");
  TORCH_CHECK(thr_sums.sizes() == at::IntArrayRef({L}) && thr_sums.scalar_type() == at::kDouble &&
                  thr_sums.is_contiguous(), "mpruner._hsic_finish: thr_sums must be (L,) contiguous float64");
  TORCH_CHECK(flags.sizes() == at::IntArrayRef({L + 2}) && flags.scalar_type() == at::kLong && flags.is_contiguous(),
              "mpruner._hsic_finish: flags must be (L + 2,) contiguous int64");
  for (const at::Tensor* t : {&rowsums, &scale, &index, &sums, &thr_sums, &flags})
    check_same_device(pairs, *t, "pairs", "the other arguments");
}

inline void check_center_args(const at::Tensor& k, const at::Tensor& rowsums, const at::Tensor& totals) {
  TORCH_CHECK(k.dim() == 3, "mpruner._center_apply: k must be (B, n, n), got ", k.sizes());
  check_square_last(k, "_center_apply: k");
  check_float_tensor(k, "_center_apply: k");
  check_same_device(k, rowsums, "k", "rowsums");
  check_same_device(k, totals, "k", "totals");
  TORCH_CHECK(rowsums.sizes() == at::IntArrayRef({k.size(0), k.size(1)}) &&
                  totals.sizes() == at::IntArrayRef({k.size(0)}),
              "mpruner._center_apply: rowsums must be (B, n) and totals (B,)");
}

inline void check_rbf_args(const at::Tensor& g, const at::Tensor& diag, const at::Tensor& inv) {
  TORCH_CHECK(g.dim() == 3, "mpruner._rbf_apply: g must be (B, n, n), got ", g.sizes());
  check_square_last(g, "_rbf_apply: g");
  check_float_tensor(g, "_rbf_apply: g");
  check_same_device(g, diag, "g", "diag");
  check_same_device(g, inv, "g", "inv_two_sigma2");
  TORCH_CHECK(diag.sizes() == at::IntArrayRef({g.size(0), g.size(1)}), "mpruner._rbf_apply: diag must be (B, n) = (",
              g.size(0), ", ", g.size(1), "), got ", diag.sizes());
  TORCH_CHECK(inv.dim() == 1 && inv.size(0) == g.size(0), "mpruner._rbf_apply: inv_two_sigma2 must be (B,)");
}

// _shift_features / _layer_grams: layers (n, d_l) on one device, float32 or float64; shift
// flat (sum d_l,) on that device (or undefined: each layer's first row); for a bfloat16
// split the GEMM input is float32, from float32 layers.
inline void check_shift_args(at::TensorList xs, const c10::optional<at::Tensor>& shift, const char* op,
                             bool same_width) {
  TORCH_CHECK(!xs.empty(), "mpruner.", op, ": xs is empty; pass at least one (n, d) layer");
  int64_t total = 0;
  for (size_t g = 0; g < xs.size(); ++g) {
    TORCH_CHECK(xs[g].dim() == 2 && xs[g].size(0) == xs[0].size(0) && xs[g].size(1) > 0, "mpruner.", op, ": xs[", g,
                "] must be (n, d) with the n of xs[0] ", xs[0].sizes(), ", got ", xs[g].sizes());
    TORCH_CHECK(!same_width || xs[g].size(1) == xs[0].size(1), "mpruner.", op, ": xs[", g, "] is ", xs[g].sizes(),
                " but xs[0] is ", xs[0].sizes(), "; one call takes layers of one width");
    check_float_tensor(xs[g], op);
    TORCH_CHECK(xs[g].scalar_type() == xs[0].scalar_type(), "mpruner.", op, ": xs[", g, "] is ",
                xs[g].scalar_type(), " but xs[0] is ", xs[0].scalar_type());
    check_same_device(xs[g], xs[0], "a layer", "xs[0]");
    total += xs[g].size(1);
  }
  if (shift.has_value() && shift->defined()) {
    TORCH_CHECK(shift->dim() == 1 && shift->size(0) == total, "mpruner.", op, ": shift must be (", total,
                ",) (every layer's d values, one after another), got shape ", shift->sizes());
    TORCH_CHECK(at::isFloatingType(shift->scalar_type()), "mpruner.", op, ": shift must be floating point");
    check_same_device(*shift, xs[0], "shift", "xs[0]");
  }
}

// _shift_features' output checks and operands, alike on every backend: the output dtype, the
// split (which forms bfloat16 parts of float32 layers in float32, so needs both float32), and
// per layer the features contiguous along d (a view is kept as it is) with its shift (the
// caller's, or the layer's first row) in the layer's dtype.
inline void check_shift_output(at::ScalarType in, at::ScalarType dtype, bool split, c10::string_view split_name) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
              "mpruner._shift_features: dtype must be float32, float64 or bfloat16, got ", dtype);
  TORCH_CHECK(!split || (dtype == at::kFloat && in == at::kFloat), "mpruner._shift_features: split='",
              std::string(split_name), "' forms bfloat16 parts of float32 layers in float32; got layers of ", in,
              " and dtype ", dtype);
}

inline std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> shift_operands(
    at::TensorList xs_in, const c10::optional<at::Tensor>& shift) {
  const int64_t d = xs_in[0].size(1);
  std::vector<at::Tensor> xs, shifts;
  for (int64_t g = 0; g < static_cast<int64_t>(xs_in.size()); ++g) {
    xs.push_back(xs_in[g].stride(1) == 1 ? xs_in[g] : xs_in[g].contiguous());
    shifts.push_back((shift.has_value() && shift->defined() ? shift->narrow(0, g * d, d) : xs[g].select(0, 0))
                         .to(xs_in[0].scalar_type())
                         .contiguous());
  }
  return {std::move(xs), std::move(shifts)};
}

}  // namespace mpruner

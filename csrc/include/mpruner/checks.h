// Argument checks shared by the backend kernels.
#pragma once

#include <ATen/ATen.h>

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

// Arguments of the backend kernels, checked alike by every backend.
inline void check_partials_args(const at::Tensor& grams, const at::Tensor& lengths) {
  TORCH_CHECK(grams.dim() == 4, "mpruner._hsic_partials: grams must be (L, B, T, T), got ", grams.sizes());
  check_square_last(grams, "_hsic_partials: grams");
  check_float_tensor(grams, "_hsic_partials: grams");
  check_same_device(grams, lengths, "grams", "lengths");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == grams.size(1), "mpruner._hsic_partials: lengths must be (B,) with B=",
              grams.size(1), ", got ", lengths.sizes());
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

inline void check_rbf_args(const at::Tensor& g, const at::Tensor& inv) {
  TORCH_CHECK(g.dim() == 3, "mpruner._rbf_apply: g must be (B, n, n), got ", g.sizes());
  check_square_last(g, "_rbf_apply: g");
  check_float_tensor(g, "_rbf_apply: g");
  check_same_device(g, inv, "g", "inv_two_sigma2");
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

}  // namespace mpruner

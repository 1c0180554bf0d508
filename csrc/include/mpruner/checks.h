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

}  // namespace mpruner

// CPU kernel of _shift_features: layers of one width, each minus its shift, stacked in
// the GEMM's layout in one pass that also sums the columns (the next batch's shift).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "mpruner/shift_math.h"
#include "shift_rows.h"

namespace mpruner {
namespace {

std::tuple<at::Tensor, at::Tensor> shift_features_cpu(at::TensorList xs_in, const c10::optional<at::Tensor>& shift,
                                                      at::ScalarType dtype, c10::string_view split_name) {
  check_shift_args(xs_in, shift, "_shift_features", /*same_width=*/true);
  const int split = cpu::parse_split(split_name, "_shift_features");
  const auto in = xs_in[0].scalar_type();
  check_shift_output(in, dtype, split != shift::kNone, split_name);
  const int64_t G = xs_in.size(), n = xs_in[0].size(0), d = xs_in[0].size(1);
  const int64_t w = shift::width_factor(split);
  at::Tensor out = at::empty({G, n, w * d}, xs_in[0].options().dtype(dtype));
  at::Tensor colsums = at::zeros({G * d}, xs_in[0].options().dtype(at::kDouble));
  auto operands = shift_operands(xs_in, shift);  // (named, not bound: lambdas capture them)
  const std::vector<at::Tensor>& xs = operands.first;
  const std::vector<at::Tensor>& shifts = operands.second;
  // S row splits per layer, their column sums added in split order: the same answer
  // whatever the thread count.
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(8, n / 64));
  at::Tensor partial = at::zeros({G * S, d}, colsums.options());
  at::parallel_for(0, G * S, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = t / S, s = t % S;
      const int64_t r0 = n * s / S, r1 = n * (s + 1) / S;
      at::Tensor o = out.select(0, g);
      cpu::shift_rows_any(xs[g], shifts[g], r0, r1, o, split, partial[t].data_ptr<double>());
    }
  });
  colsums.copy_(partial.view({G, S, d}).sum(1).view({G * d}));
  return {out, colsums};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_shift_features", &mpruner::shift_features_cpu);
}

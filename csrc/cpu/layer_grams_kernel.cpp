// CPU kernel of _layer_grams: the linear Grams of L layers, each layer's features shifted
// (one pass, into a buffer its thread reuses) and multiplied while they are in cache.
//
// Threads take whole layers while there are enough to go round (no barrier after each
// small GEMM); the last L mod T layers are split by rows across all threads, in slices of
// equal GEMM work, so that no thread idles at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mpruner/checks.h"
#include "mpruner/shift_math.h"
#include "mpruner/triangular_gram.h"
#include "shift_rows.h"

namespace mpruner {
namespace {

struct Layer {
  at::Tensor x, shift;  // x with unit column stride; shift contiguous, x's dtype
  int64_t offset;       // of its d values in the flat shift / column sums
};

// The GEMM's two operands inside a shifted buffer (n, w d): the same matrix, or for the
// hi/lo split the windows [0, 3d) and [d, 4d) of [hi | hi | lo | hi].
std::pair<at::Tensor, at::Tensor> operands(const at::Tensor& buf, int split, int64_t d) {
  if (split != shift::kHiLo) return {buf, buf};
  return {buf.narrow(1, 0, 3 * d), buf.narrow(1, d, 3 * d)};
}

std::tuple<at::Tensor, at::Tensor> layer_grams_cpu(at::TensorList xs_in, const c10::optional<at::Tensor>& shift,
                                                   c10::string_view split_name, int64_t block) {
  check_shift_args(xs_in, shift, "_layer_grams", /*same_width=*/false);
  const int split = cpu::parse_split(split_name, "_layer_grams");
  const auto dtype = xs_in[0].scalar_type();
  TORCH_CHECK(split == shift::kNone || dtype == at::kFloat, "mpruner._layer_grams: split='",
              std::string(split_name), "' forms bfloat16 parts of float32 layers; got ", dtype);
  const int64_t L = xs_in.size(), n = xs_in[0].size(0), w = shift::width_factor(split);
  if (block < 0) block = default_gram_block(n);
  if (block >= n) block = 0;  // one block row is the full product
  const bool triangle = block > 0;
  std::vector<Layer> layers;
  int64_t total = 0;
  for (int64_t l = 0; l < L; ++l) {
    at::Tensor x = xs_in[l].stride(1) == 1 ? xs_in[l] : xs_in[l].contiguous();
    const int64_t d = x.size(1);
    at::Tensor s = shift.has_value() && shift->defined() ? shift->narrow(0, total, d) : x.select(0, 0);
    layers.push_back({x, s.to(dtype).contiguous(), total});
    total += d;
  }
  at::Tensor out = at::empty({L, n, n}, xs_in[0].options());
  at::Tensor colsums = at::zeros({total}, xs_in[0].options().dtype(at::kDouble));
  double* cs = colsums.data_ptr<double>();

  const int64_t T = at::in_parallel_region() ? 1 : std::max<int64_t>(1, at::get_num_threads());
  const int64_t whole = L >= T ? L - L % T : 0;  // layers that threads take whole
  const at::ThreadLocalState state;              // grad/inference mode etc. of the caller
  at::parallel_for(0, whole, 1, [&](int64_t l0, int64_t l1) {
    at::ThreadLocalStateGuard guard(state);
    at::Tensor buf;
    for (int64_t l = l0; l < l1; ++l) {
      const Layer& ly = layers[l];
      const int64_t d = ly.x.size(1);
      if (!buf.defined() || buf.size(1) != w * d) buf = at::empty({n, w * d}, ly.x.options());
      cpu::shift_rows_any(ly.x, ly.shift, 0, n, buf, split, cs + ly.offset);
      auto ab = operands(buf, split, d);
      at::Tensor dst = out.select(0, l);
      gram_rows_into(dst, ab.first, ab.second, 0, n, block);
    }
  });
  const int64_t rest = L - whole;
  if (rest == 0) return {out, colsums};
  // The last layers: their shifted features first (T row slices per layer, column sums
  // added in slice order), then each Gram in T row slices of equal work.
  std::vector<at::Tensor> bufs;
  int64_t widest = 0;
  for (int64_t r = 0; r < rest; ++r) {
    bufs.push_back(at::empty({n, w * layers[whole + r].x.size(1)}, out.options()));
    widest = std::max<int64_t>(widest, layers[whole + r].x.size(1));
  }
  at::Tensor partial = at::zeros({rest * T, widest}, colsums.options());
  at::parallel_for(0, rest * T, 1, [&](int64_t t0, int64_t t1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / T, k = t % T;
      const Layer& ly = layers[whole + r];
      cpu::shift_rows_any(ly.x, ly.shift, n * k / T, n * (k + 1) / T, bufs[r], split, partial[t].data_ptr<double>());
    }
  });
  for (int64_t r = 0; r < rest; ++r) {
    const Layer& ly = layers[whole + r];
    at::Tensor part = partial.narrow(0, r * T, T).narrow(1, 0, ly.x.size(1)).sum(0);
    colsums.narrow(0, ly.offset, ly.x.size(1)).copy_(part);
  }
  at::parallel_for(0, rest * T, 1, [&](int64_t t0, int64_t t1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / T, k = t % T;
      auto ab = operands(bufs[r], split, layers[whole + r].x.size(1));
      at::Tensor dst = out.select(0, whole + r);
      gram_rows_into(dst, ab.first, ab.second, balanced_row(n, k, T, triangle), balanced_row(n, k + 1, T, triangle),
                     block);
    }
  });
  return {out, colsums};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CPU, m) {
  m.impl("_layer_grams", &mpruner::layer_grams_cpu);
}

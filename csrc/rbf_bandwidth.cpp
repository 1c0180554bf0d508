// The RBF kernel's bandwidths (_rbf_bandwidths), device-agnostic ATen: the median of a batch's
// squared distances for every layer, by one of two selections of the same order statistic.
//   sort:  kthvalue over each layer's n^2 distances (per slice: on a GPU one thread block
//          each, so a few layers of a million distances leave the device idle);
//   radix: float32 only, exact: a non-negative float orders like its bit pattern, so two
//          histograms of 16 bits each (every layer in one index_add) find the k-th pattern
//          without sorting anything and without reading a value back to the host.
// "auto" takes radix on GPUs for float32 Grams with n >= 256, sort otherwise.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "mpruner/hsic_math.h"

namespace mpruner {
namespace {

constexpr int64_t kHighBins = int64_t(1) << 15;  // bits 30..16 of a non-negative float32
constexpr int64_t kLowBins = int64_t(1) << 16;   // bits 15..0

// The k-th smallest (0-based, k (c,) int64 or one number) of counts' bins: the first bin
// whose running count exceeds k, and the elements before it.
std::pair<at::Tensor, at::Tensor> select_bin(const at::Tensor& counts, const at::Tensor& k) {
  at::Tensor cum = counts.cumsum(1);                              // (c, bins) int64
  at::Tensor bin = (cum <= k.unsqueeze(1)).sum(1);                // (c,)
  at::Tensor before = cum.gather(1, (bin - 1).clamp_min(0).unsqueeze(1)).squeeze(1);
  return {bin, at::where(bin > 0, before, at::zeros_like(before))};
}

// Values of rank k (0-based, int64 (c,)) of every row of d2 (c, m), float32, all >= 0 or NaN.
at::Tensor radix_kth(const at::Tensor& d2, const at::Tensor& k) {
  const int64_t c = d2.size(0);
  at::Tensor bits = d2.contiguous().view(at::kInt);
  bits = at::where(bits < 0, at::zeros_like(bits), bits);  // -0.0 counts as 0
  at::Tensor offset = at::arange(c, bits.options()).unsqueeze(1);
  at::Tensor ones = at::ones_like(bits);
  at::Tensor high = bits.bitwise_right_shift(16);
  at::Tensor h1 = at::zeros({c * kHighBins}, bits.options())
                      .index_add_(0, (high + offset * kHighBins).flatten(), ones.flatten())
                      .view({c, kHighBins})
                      .to(at::kLong);
  auto [b1, below] = select_bin(h1, k);
  at::Tensor in_bin = (high == b1.to(at::kInt).unsqueeze(1)).to(at::kInt);
  at::Tensor low = bits.bitwise_and(0xFFFF);
  at::Tensor h2 = at::zeros({c * kLowBins}, bits.options())
                      .index_add_(0, (low + offset * kLowBins).flatten(), in_bin.flatten())
                      .view({c, kLowBins})
                      .to(at::kLong);
  auto [b2, unused] = select_bin(h2, k - below);
  (void)unused;
  return (b1.bitwise_left_shift(16) + b2).to(at::kInt).view(at::kFloat);
}

// Bandwidth of the RBF kernel as in the canonical CKA reference (Kornblith et al.
// 2019, gram_rbf): sigma^2 * the median of ALL n^2 squared distances of the batch,
// diagonal zeros included, the mean of the two middle values for an even count
// (np.median). Only the upper triangle of g is read (the CPU leaves the lower one
// unset). The full list is n zeros followed by every off-diagonal distance twice,
// so its k-th value is an order statistic of the upper triangle (math::
// rbf_median_rank). The distances are formed in the Gram's dtype one layer chunk
// at a time, so memory stays within about max_bytes whatever L is.
at::Tensor rbf_bandwidths_impl(const at::Tensor& g, double sigma, c10::string_view select_in) {
  TORCH_CHECK(g.dim() == 3 && g.size(1) == g.size(2), "mpruner._rbf_bandwidths: g must be (L, n, n), got ", g.sizes());
  TORCH_CHECK(sigma > 0, "mpruner._rbf_bandwidths: sigma must be > 0, got ", sigma);
  const std::string select(select_in);
  TORCH_CHECK(select == "auto" || select == "sort" || select == "radix",
              "mpruner._rbf_bandwidths: select must be 'auto', 'sort' or 'radix', got '", select, "'");
  const int64_t L = g.size(0), n = g.size(1);
  TORCH_CHECK(n >= 2, "mpruner._rbf_bandwidths: the RBF kernel needs n >= 2 samples, got ", n);
  const bool float32 = g.scalar_type() == at::kFloat;
  TORCH_CHECK(select != "radix" || float32, "mpruner._rbf_bandwidths: select='radix' needs float32 Grams, got ",
              g.scalar_type());
  const bool radix = select == "radix" || (select == "auto" && float32 && !g.is_cpu() && n >= 256);
  const int64_t nn = n * n;
  const int64_t lo = nn % 2 == 0 ? nn / 2 - 1 : nn / 2, hi = nn / 2;  // 0-based middle positions
  // d2, its temporaries and kthvalue's copy; radix: the bit patterns, their bins, the counts' inputs.
  const int64_t per_layer = nn * (radix ? 24 : g.element_size() * 4);
  const int64_t max_bytes = int64_t(256) << 20;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(L, max_bytes / std::max<int64_t>(per_layer, 1)));
  std::vector<at::Tensor> meds;
  for (int64_t l0 = 0; l0 < L; l0 += chunk) {
    at::Tensor gc = g.narrow(0, l0, std::min(chunk, L - l0));
    at::Tensor diag = gc.diagonal(0, 1, 2);  // (c, n)
    // Strict upper triangle: d2; everything else 0 (sorted first, as the mapping expects).
    at::Tensor d2 = (diag.unsqueeze(2) + diag.unsqueeze(1) - 2.0 * gc).clamp_min_(0.0).triu_(1).reshape({gc.size(0), nn});
    auto kth = [&](int64_t pos) {  // pos-th (0-based) value of the full n^2 list
      const int64_t rank = math::rbf_median_rank(pos, n);  // index into the masked list
      if (radix) return radix_kth(d2, at::full({gc.size(0)}, rank, d2.options().dtype(at::kLong))).to(at::kDouble);
      return std::get<0>(d2.kthvalue(rank + 1, 1)).to(at::kDouble);
    };
    meds.push_back(lo == hi ? kth(lo) : 0.5 * (kth(lo) + kth(hi)));
  }
  at::Tensor med = meds.size() == 1 ? meds[0] : at::cat(meds);
  // All-identical samples (median 0) give a constant kernel, whose HSIC is 0.
  return at::where(med > 0, 1.0 / (2.0 * sigma * sigma * med), at::zeros_like(med));
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CompositeImplicitAutograd, m) {
  m.impl("_rbf_bandwidths", &mpruner::rbf_bandwidths_impl);
}

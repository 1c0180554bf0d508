// CUDA kernel of _shift_features: layers of one width minus a shift known before the
// pass, written in the GEMM's layout with one read and one write of the features; the
// column sums (the next batch's shift) come from the same pass. The per-element
// arithmetic is mpruner/shift_math.h and the row splits mpruner/tiling.h, shared with
// the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "mpruner/checks.h"
#include "mpruner/shift_math.h"
#include "mpruner/tiling.h"

namespace mpruner {
namespace {

// Up to kChunk layers per launch, passed by value (no pointer table to copy over).
constexpr int kChunk = 64;
constexpr int kColThreads = 128;

struct ShiftChunk {
  const void* ptr[kChunk];
  const void* shift[kChunk];
  int64_t row_stride[kChunk];
};

// Thread = one column of one row split of one layer (consecutive threads, consecutive
// columns: coalesced). partial[g][s][c] = sum over the split's rows of x - shift.
template <int split, typename in_t, typename out_t>
__global__ void shift_kernel(ShiftChunk sc, int64_t n, int64_t d, int64_t S, int64_t g0, out_t* __restrict__ out,
                             double* __restrict__ partial) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, s = blockIdx.y, g = blockIdx.z;
  if (c >= d) return;
  int64_t r0, r1;
  tiling::split_rows(n, S, s, r0, r1);
  const in_t* x = static_cast<const in_t*>(sc.ptr[g]);
  const in_t sh = static_cast<const in_t*>(sc.shift[g])[c];
  const int64_t stride = sc.row_stride[g], w = shift::width_factor(split) * d;
  out_t* o = out + (g0 + g) * n * w;
  double sum = 0.0;
  for (int64_t r = r0; r < r1; ++r) sum += static_cast<double>(shift::write_shifted<split>(x[r * stride + c], sh, c, d, o + r * w));
  partial[((g0 + g) * S + s) * d + c] = sum;
}

// The S partials of each column added in split order (deterministic).
__global__ void add_partials_kernel(const double* __restrict__ partial, int64_t G, int64_t S, int64_t d,
                                    double* __restrict__ colsums) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= G * d) return;
  const int64_t g = i / d, c = i - g * d;
  double sum = 0.0;
  for (int64_t k = 0; k < S; ++k) sum += partial[(g * S + k) * d + c];
  colsums[i] = sum;
}

int parse_split(c10::string_view split) {
  if (split == "none") return shift::kNone;
  if (split == "round") return shift::kRound;
  TORCH_CHECK(split == "hilo", "mpruner._shift_features: split must be 'none', 'round' or 'hilo', got '",
              std::string(split), "'");
  return shift::kHiLo;
}

template <int split, typename in_t, typename out_t>
void launch(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& shifts, int64_t n, int64_t d,
            int64_t S, at::Tensor& out, at::Tensor& partial, cudaStream_t stream) {
  const int64_t G = xs.size();
  for (int64_t g0 = 0; g0 < G; g0 += kChunk) {
    const int64_t count = std::min<int64_t>(kChunk, G - g0);
    ShiftChunk sc{};
    for (int64_t g = 0; g < count; ++g) {
      sc.ptr[g] = xs[g0 + g].data_ptr<in_t>();
      sc.shift[g] = shifts[g0 + g].data_ptr<in_t>();
      sc.row_stride[g] = xs[g0 + g].stride(0);
    }
    dim3 grid((d + kColThreads - 1) / kColThreads, S, count);
    shift_kernel<split, in_t, out_t><<<grid, kColThreads, 0, stream>>>(sc, n, d, S, g0, out.data_ptr<out_t>(),
                                                                       partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> shift_features_cuda(at::TensorList xs_in, const c10::optional<at::Tensor>& shift,
                                                       at::ScalarType dtype, c10::string_view split_name) {
  check_shift_args(xs_in, shift, "_shift_features", /*same_width=*/true);
  const int split = parse_split(split_name);
  const auto in = xs_in[0].scalar_type();
  check_shift_output(in, dtype, split != shift::kNone, split_name);
  const int64_t G = xs_in.size(), n = xs_in[0].size(0), d = xs_in[0].size(1);
  c10::cuda::CUDAGuard guard(xs_in[0].device());
  auto operands = shift_operands(xs_in, shift);  // (named, not bound: lambdas capture them)
  const std::vector<at::Tensor>& xs = operands.first;
  const std::vector<at::Tensor>& shifts = operands.second;
  at::Tensor out = at::empty({G, n, shift::width_factor(split) * d}, xs[0].options().dtype(dtype));
  at::Tensor colsums = at::empty({G * d}, xs[0].options().dtype(at::kDouble));
  if (out.numel() == 0) return {out, colsums.zero_()};
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(16, n / 64));  // row splits: enough blocks for small d
  at::Tensor partial = at::empty({G, S, d}, colsums.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in, "mpruner_shift_features_cuda", [&] {
    using in_t = scalar_t;
    if (split == shift::kRound) {
      launch<shift::kRound, in_t, float>(xs, shifts, n, d, S, out, partial, stream);
    } else if (split == shift::kHiLo) {
      launch<shift::kHiLo, in_t, float>(xs, shifts, n, d, S, out, partial, stream);
    } else if (dtype == at::kBFloat16) {
      launch<shift::kNone, in_t, c10::BFloat16>(xs, shifts, n, d, S, out, partial, stream);
    } else if (dtype == at::kDouble) {
      launch<shift::kNone, in_t, double>(xs, shifts, n, d, S, out, partial, stream);
    } else {
      launch<shift::kNone, in_t, float>(xs, shifts, n, d, S, out, partial, stream);
    }
  });
  const int64_t total = G * d;
  add_partials_kernel<<<(total + 255) / 256, 256, 0, stream>>>(partial.data_ptr<double>(), G, S, d,
                                                               colsums.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, colsums};
}

}  // namespace
}  // namespace mpruner

TORCH_LIBRARY_IMPL(mpruner, CUDA, m) {
  m.impl("_shift_features", &mpruner::shift_features_cuda);
}

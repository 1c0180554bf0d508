// What the two _hsic_partials kernels (tiled: hsic_kernel.cu, register-blocked:
// hsic_blocked_kernel.cu) share: the launch arguments. Both write the same per-tile slots, which
// the reduction kernels of hsic_kernel.cu add up in a fixed order.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mpruner {
namespace gpu {

struct PartialsLaunch {
  const at::Tensor& grams;  // (L, B, T, T), contiguous, float32 or float64
  const int64_t* lengths;   // (B,) on the device, or nullptr: every sequence has T rows
  bool unbiased;
  double* pair_part;        // [B][tiles][L(L+1)/2]
  double* row_part;         // [B][tiles][2][L][kTile]
  int64_t shared_optin;     // the device's opt-in shared memory per block, bytes
};

// The register-blocked pass (MPRUNER_HSIC_KERNEL=blocked).
void launch_blocked_partials(const PartialsLaunch& args);

}  // namespace gpu
}  // namespace mpruner

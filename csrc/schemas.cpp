// The one place where mpruner's operators are declared. Backends implement them
// in csrc/cpu and csrc/cuda; the composite ops are in csrc/composite.cpp.
#include <torch/library.h>

TORCH_LIBRARY(mpruner, m) {
  // Public ops (CompositeImplicitAutograd: device-agnostic ATen + the kernels below).
  // Linear or RBF Grams of L layers (each (n, d_l)) -> (L, n, n). Each layer's features
  // are shifted by its first row before the product (HSIC and CKA are invariant to it;
  // grams_shifted takes any shift, e.g. the means). `triangular` allows leaving the strict lower
  // triangle unset (CPU: half the GEMM work) for consumers that read only the
  // upper one; other backends compute full Grams in one batched GEMM per width.
  //
  // precision: the GEMM's float32 mode, as torch.set_float32_matmul_precision names them:
  // "highest" (IEEE float32), "high" (CPU: each value as hi + lo, both bfloat16, three
  // products in one GEMM; CUDA: TF32, which torch's matmul flag selects), "medium" (bfloat16
  // inputs, float32 accumulation). float64 layers are computed in float64 whatever it says.
  // block: the Gram GEMM strategy; -1 the built-in default, 0 one full product, b > 0
  // upper-triangle block rows of b rows (only with triangular=True).
  m.def("grams(Tensor[] xs, str kernel=\"linear\", float sigma=0.5, bool triangular=False, "
        "str precision=\"highest\", int block=-1) -> Tensor");
  // grams with each layer's features shifted by a vector known before the pass (HSIC is
  // invariant to it; float32 needs features near centered): shift is flat (sum_l d_l,),
  // None = each layer's first row. Also returns the column sums of the shifted features,
  // flat (sum_l d_l,) float64, from the same pass (next batch's shift: shift + sums / n).
  m.def("grams_shifted(Tensor[] xs, Tensor? shift, str kernel=\"linear\", float sigma=0.5, "
        "bool triangular=False, str precision=\"highest\", int block=-1) -> (Tensor, Tensor)");
  // Double centering or U-centering of (B, n, n) Grams.
  m.def("center_gram(Tensor k, bool unbiased=False) -> Tensor");
  // All-pairs HSIC of L Grams (L, n, n) -> (L, L) float64, reading only the upper triangle.
  m.def("hsic_matrix(Tensor grams, bool unbiased=False) -> Tensor");
  // Per-sequence all-pairs HSIC: Grams (L, B, T, T) of B sequences whose first
  // lengths[b] tokens are valid -> (B, L, L) float64.
  m.def("token_hsic(Tensor grams, Tensor lengths, bool unbiased=False) -> Tensor");

  // Backend kernels.
  // Upper-triangle sums for every layer pair and row sums, in float64:
  // pairs (B, L, L) = sum_ij K_a,ij K_b,ij, rowsums (B, L, T). Sequence b's first lengths[b]
  // rows and columns are valid (checked to lie in [0, T]); no lengths: all T.
  m.def("_hsic_partials(Tensor grams, Tensor? lengths, bool unbiased) -> (Tensor, Tensor)");
  // The accumulator's epilogue in one pass (CKAAccumulator on a device with
  // MPRUNER_FUSED_EPILOGUE=1): HSIC (L, L) of one batch of n samples from _hsic_partials'
  // pairs (L, L) and rowsums (L, T), then either (skip=False) sums += HSIC, thr_sums +=
  // (thr_factor * scale)^2 and flags[l] = index for the first batch whose self-HSIC is not
  // finite, or (skip=True) the same sums unless any self-HSIC is not finite, which instead
  // adds (1, n) to flags[L:L+2] (skipped batches, their samples). flags is (L + 2,) int64.
  m.def("_hsic_finish(Tensor pairs, Tensor rowsums, int n, bool unbiased, Tensor scale, float thr_factor, "
        "Tensor index, bool skip, Tensor(a!) sums, Tensor(b!) thr_sums, Tensor(c!) flags) -> ()");
  // Centering of (B, n, n) Grams given float64 row sums (B, n) and totals (B,).
  m.def("_center_apply(Tensor k, Tensor rowsums, Tensor totals, bool unbiased) -> Tensor");
  // RBF Gram from a linear Gram (B, n, n), its diagonal (B, n) (the squared norms, read
  // once rather than gathered per element) and 1/(2 sigma^2) per matrix (B,), float64.
  m.def("_rbf_apply(Tensor g, Tensor diag, Tensor inv_two_sigma2) -> Tensor");
  // 1/(2 sigma^2 median d^2) of L linear Grams (L, n, n) -> (L,) float64 (composite):
  // select = "sort" (kthvalue), "radix" (float32: two bit-pattern histograms) or "auto".
  m.def("_rbf_bandwidths(Tensor g, float sigma, str select=\"auto\") -> Tensor");
  // G layers (n, d) of one width, each minus its shift (flat (G d,); None: its first row),
  // stacked in the GEMM's layout in one pass -> ((G, n, w d) of dtype, column sums of the
  // shifted values (G d,) float64). split "none" (w = 1; dtype float32, float64, or
  // bfloat16, which rounds), "round" (w = 1, bfloat16-rounded values in float32), "hilo"
  // (w = 4, rows [hi | hi | lo | hi] in float32). CUDA: one read and one write.
  m.def("_shift_features(Tensor[] xs, Tensor? shift, ScalarType dtype, str split) -> (Tensor, Tensor)");
  // CPU: the linear Grams (L, n, n) of L layers of any widths, each shifted as in
  // _shift_features into a buffer its thread reuses and multiplied in cache; block as in
  // grams (0: full, b > 0: the upper triangle by rows of b). Returns the column sums too.
  m.def("_layer_grams(Tensor[] xs, Tensor? shift, str split, int block) -> (Tensor, Tensor)");
  // Per-sequence all-pairs HSIC straight from hidden states (CPU): L tensors
  // (B, T, D_l); sequence b's real tokens are rows positions[b, :lengths[b]].
  // Gathers, centers and builds each sequence's Grams in cache -> (B, L, L) float64.
  // The threads' Grams stay within max_gram_bytes (long sequences go in row blocks).
  m.def("_token_hsic_fused(Tensor[] hidden, Tensor positions, Tensor lengths, bool unbiased, "
        "int max_gram_bytes) -> Tensor");

  // Cosine similarity and angular distance between hidden states, token by token: K tensors
  // (B, T, D) of one shape; rows (N,) selects tokens of the flattened (B, T) grid. Returns the
  // sums over those tokens of cos(h_a[t], h_b[t]) and of arccos(cos)/pi, each (K, K) float64.
  m.def("_cosine_sums(Tensor[] hidden, Tensor rows) -> (Tensor, Tensor)");
}


// The CUDA kernels' index math (mpruner/tiling.h), checked on the CPU for every
// layer count L in 1..130 and every n in 4..2100 (edge tiles, partial warps): the
// tiles, pair chunks and row splits cover everything exactly once, and the
// fixed-order reduction of per-tile partial row sums, fed by an emulation of the
// kernel's writes, gives the rows' sums.
#include <cmath>
#include <cstdio>
#include <vector>

#include "mpruner/hsic_math.h"
#include "mpruner/tiling.h"

namespace {

using namespace mpruner;
int failures = 0;

#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      std::printf("FAIL: " __VA_ARGS__); \
      std::printf("\n");                 \
      if (++failures > 20) return;       \
    }                                    \
  } while (0)

void test_triangle_coords() {
  for (int64_t n = 4; n <= 2100; ++n) {
    const int64_t nt = tiling::num_tiles(n);
    CHECK(nt * tiling::kTile >= n && (nt - 1) * tiling::kTile < n, "num_tiles(%ld)", long(n));
    int64_t t = 0;
    for (int64_t I = 0; I < nt; ++I)
      for (int64_t J = I; J < nt; ++J, ++t) {
        int64_t i, j;
        tiling::triangle_coords(t, nt, i, j);
        CHECK(i == I && j == J && tiling::triangle_index(I, J, nt) == t, "tile %ld of nt=%ld -> (%ld, %ld)", long(t),
              long(nt), long(i), long(j));
      }
  }
  // Large grids (n up to 2^20) at the row boundaries, where rounding would bite.
  for (int64_t nt : {1000L, 4097L, 32767L}) {
    for (int64_t I : {int64_t(0), int64_t(1), nt / 2, nt - 2, nt - 1}) {
      for (int64_t J : {I, nt - 1}) {
        int64_t i, j;
        tiling::triangle_coords(tiling::triangle_index(I, J, nt), nt, i, j);
        CHECK(i == I && j == J, "large nt=%ld (%ld, %ld)", long(nt), long(I), long(J));
      }
    }
  }
}

void test_pair_chunks() {
  for (int64_t L = 1; L <= 130; ++L) {
    const int R = tiling::pairs_per_thread(L);
    const int64_t chunks = tiling::num_chunks(L, R), groups = tiling::pair_groups(L);
    CHECK(R == tiling::kMaxChunkPairs || chunks <= tiling::kHsicThreads, "L=%ld: R=%d leaves %ld chunks", long(L), R, long(chunks));
    CHECK(R == 1 || tiling::num_chunks(L, R / 2) > tiling::kHsicThreads, "L=%ld: R=%d is not the smallest", long(L), R);
    CHECK(groups * tiling::kHsicThreads >= chunks && (groups - 1) * tiling::kHsicThreads < chunks, "groups L=%ld",
          long(L));
    CHECK(L > 82 || groups == 1, "L=%ld needs %ld groups", long(L), long(groups));  // L <= 82 (L=64 too): one pass
    std::vector<int> seen(L * L, 0);
    for (int64_t c = 0; c < groups * tiling::kHsicThreads; ++c) {
      int a, b0, count;
      tiling::chunk_coords(c, L, R, a, b0, count);
      CHECK((c < chunks) == (count > 0) && count <= R, "L=%ld chunk %ld count %d", long(L), long(c), count);
      for (int k = 0; k < count; ++k) {
        const int b = b0 + k;
        CHECK(a <= b && b < L, "L=%ld chunk %ld pair (%d, %d)", long(L), long(c), a, b);
        if (a <= b && b < L) ++seen[a * L + b];
        int64_t pa, pb;  // the pair's slot maps back to it
        tiling::triangle_coords(tiling::triangle_index(a, b, L), L, pa, pb);
        CHECK(pa == a && pb == b, "pair slot L=%ld (%d, %d)", long(L), a, b);
      }
    }
    for (int a = 0; a < L; ++a)
      for (int b = a; b < L; ++b) CHECK(seen[a * L + b] == 1, "L=%ld pair (%d, %d) seen %d times", long(L), a, b,
                                        seen[a * L + b]);
  }
}

void test_split_rows() {
  for (int64_t n = 1; n <= 2100; ++n)
    for (int64_t S : {1, 2, 3, 7, 16}) {
      int64_t next = 0;
      for (int64_t s = 0; s < S; ++s) {
        int64_t r0, r1;
        tiling::split_rows(n, S, s, r0, r1);
        CHECK(r0 == next && r1 >= r0 && r1 - r0 <= n / S + 1, "split n=%ld S=%ld s=%ld", long(n), long(S), long(s));
        next = r1;
      }
      CHECK(next == n, "split n=%ld S=%ld covers %ld", long(n), long(S), long(next));
    }
}

// Emulates partials_kernel's row-sum writes for one sequence of length n in a T x T
// slot (upper triangle only, unbiased drops the diagonal), then reduces.
void check_row_sums(int64_t n, int64_t T, bool unbiased) {
  const int64_t L = 2, nt = tiling::num_tiles(T), tiles = nt * (nt + 1) / 2, kT = tiling::kTile;
  auto K = [](int64_t l, int64_t i, int64_t j) {  // symmetric, distinct per entry
    const int64_t lo = i < j ? i : j, hi = i < j ? j : i;
    return double(1 + l) + 0.001 * double(lo) + 1e-7 * double(hi);
  };
  std::vector<double> slots(tiles * 2 * L * kT, std::nan(""));  // unwritten slots poison the sums
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t I, J;
    tiling::triangle_coords(t, nt, I, J);
    if (J * kT >= n) continue;  // the kernel returns early
    for (int64_t l = 0; l < L; ++l) {
      std::vector<double> col(kT, 0.0);
      for (int64_t ii = 0; ii < kT; ++ii) {
        const int64_t i = I * kT + ii;
        if (i >= n) break;
        double row = 0.0;
        for (int64_t lane = 0; lane < kT; ++lane) {
          const int64_t j = J * kT + lane;
          const double v = (j < n && j >= i && math::entry_counts(i, j, unbiased)) ? K(l, i, j) : 0.0;
          row += v;
          if (j > i) col[lane] += v;
        }
        slots[tiling::rowpart_slot(0, t, 0, l, ii, tiles, L)] = row;
      }
      for (int64_t lane = 0; lane < kT; ++lane) slots[tiling::rowpart_slot(0, t, 1, l, lane, tiles, L)] = col[lane];
    }
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < n; ++i) {
      double want = 0.0;
      for (int64_t j = 0; j < n; ++j)
        if (math::entry_counts(i, j, unbiased)) want += K(l, i, j);
      const double got = tiling::reduce_row(0, l, i, tiling::num_tiles(n), nt, L, [&](int64_t k) { return slots[k]; });
      CHECK(std::fabs(got - want) <= 1e-12 * std::fabs(want), "row sum n=%ld T=%ld l=%ld i=%ld: %.15g vs %.15g",
            long(n), long(T), long(l), long(i), got, want);
    }
}

void test_row_sums() {
  for (int64_t n = 4; n <= 140; ++n) {
    check_row_sums(n, n, n % 2 == 0);
    if (failures) return;
  }
  for (int64_t n : {255, 256, 257, 1023, 1024, 1025, 2047, 2048, 2049, 2100}) check_row_sums(n, n, n % 2 == 1);
  check_row_sums(37, 100, true);  // a short sequence in a padded slot
  check_row_sums(5, 64, false);
}

}  // namespace

int main() {
  test_triangle_coords();
  test_pair_chunks();
  test_split_rows();
  test_row_sums();
  if (failures) {
    std::printf("%d tiling check(s) failed\n", failures);
    return 1;
  }
  std::printf("tiling: all checks passed\n");
  return 0;
}

// The CUDA kernels' index math (mpruner/tiling.h), checked on the CPU for every
// layer count L in 1..130 and every n in 4..2100 (edge tiles, partial warps): the
// tiles, pair chunks and row splits cover everything exactly once, and the
// fixed-order reduction of per-tile partial row sums, fed by an emulation of the
// kernel's writes, gives the rows' sums. Layer blocks (more layers than one block's shared
// memory stages) cover every layer pair once and every layer's row sums once; an emulation of
// the register-blocked kernel's threads (mpruner/hsic_blocked.h), run with the very per-thread
// functions the GPU runs, gives every pair's sum.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "mpruner/hsic_blocked.h"
#include "mpruner/hsic_math.h"
#include "mpruner/similarity_math.h"
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

// The tiled kernel's assignment with layer blocks: block pairs (X, Y), pair groups and chunks.
void test_layer_blocks() {
  for (int64_t L = 1; L <= 60; ++L) {
    for (int64_t cap : {int64_t(2), int64_t(3), int64_t(5), int64_t(8), int64_t(13), L, L + 1, int64_t(446)}) {
      const int64_t Lb = tiling::layer_block_size(L, cap), nb = tiling::layer_blocks(L, Lb);
      CHECK(L <= cap ? (Lb == L && nb == 1) : (2 * Lb <= cap && Lb >= 1), "L=%ld cap=%ld: Lb=%ld", long(L), long(cap),
            long(Lb));
      const int R = tiling::pairs_per_thread(L, Lb);
      const int64_t groups = tiling::pair_groups(L, Lb);
      std::vector<int> seen(L * L, 0), owners(L, 0);
      for (int64_t bp = 0; bp < nb * (nb + 1) / 2; ++bp) {
        int64_t X, Y;
        tiling::triangle_coords(bp, nb, X, Y);
        const bool same = X == Y;
        const int64_t nx = tiling::block_layers(X, L, Lb), S = tiling::staged_count(X, Y, L, Lb);
        CHECK(S <= (L <= cap ? L : cap), "L=%ld cap=%ld: block pair (%ld, %ld) stages %ld", long(L), long(cap),
              long(X), long(Y), long(S));
        CHECK(tiling::num_chunks(nx, S, same, R) <= groups * tiling::kHsicThreads, "L=%ld cap=%ld: chunks", long(L),
              long(cap));
        for (int64_t c = 0; c < groups * tiling::kHsicThreads; ++c) {
          int a, b0, count;
          tiling::chunk_coords(c, nx, S, same, R, a, b0, count);
          for (int k = 0; k < count; ++k) {
            const int64_t ga = tiling::staged_layer(a, X, Y, L, Lb), gb = tiling::staged_layer(b0 + k, X, Y, L, Lb);
            CHECK(0 <= ga && ga <= gb && gb < L, "L=%ld cap=%ld: pair (%ld, %ld)", long(L), long(cap), long(ga),
                  long(gb));
            if (0 <= ga && ga <= gb && gb < L) ++seen[ga * L + gb];
          }
        }
        if (same)
          for (int64_t s = 0; s < nx; ++s) ++owners[tiling::staged_layer(s, X, Y, L, Lb)];
      }
      for (int64_t a = 0; a < L; ++a) {
        CHECK(owners[a] == 1, "L=%ld cap=%ld: layer %ld's row sums from %d blocks", long(L), long(cap), long(a),
              owners[a]);
        for (int64_t b = a; b < L; ++b)
          CHECK(seen[a * L + b] == 1, "L=%ld cap=%ld: pair (%ld, %ld) seen %d times", long(L), long(cap), long(a),
                long(b), seen[a * L + b]);
      }
      if (failures) return;
    }
  }
}

// Symmetric Gram entries, distinct and of both signs.
double gram_entry(int64_t l, int64_t i, int64_t j) {
  const int64_t lo = i < j ? i : j, hi = i < j ? j : i;
  const uint64_t h = (uint64_t(l) * 1000003u + uint64_t(lo) * 7919u + uint64_t(hi) * 104729u) * 2654435761u;
  return double(h % 20011u) / 10005.5 - 1.0;
}

// The register-blocked kernel, thread by thread, for one sequence of length n in a T x T slot:
// its pair sums over the valid tiles against the weighted sums over the whole n x n Grams.
template <typename S>
void check_blocked(int64_t L, int64_t n, int64_t T, bool unbiased, int64_t budget) {
  using blocked::kReg;
  using blocked::kRows;
  const int64_t kT = tiling::kTile, nt = tiling::num_tiles(T);
  const int64_t Lb = blocked::layer_block_size(L, budget, sizeof(S)), nb = tiling::layer_blocks(L, Lb);
  CHECK(Lb >= 1, "blocked L=%ld budget=%ld: no layer fits", long(L), long(budget));
  if (Lb < 1) return;
  const bool one = nb == 1;
  const int64_t zmax = blocked::z_groups(Lb, one ? 0 : Lb, one);
  CHECK(blocked::shared_bytes(blocked::slot_count(Lb, one ? 0 : Lb, one), Lb, sizeof(S)) <= budget,
        "blocked L=%ld: shared bytes over the budget", long(L));
  std::vector<double> got(L * L, 0.0);
  std::vector<int> writes(L * L, 0);
  for (int64_t t = 0; t < nt * (nt + 1) / 2; ++t) {
    int64_t I, J;
    tiling::triangle_coords(t, nt, I, J);
    if (J * kT >= n) continue;
    std::vector<int> tile_writes(L * L, 0);
    for (int64_t bp = 0; bp < nb * (nb + 1) / 2; ++bp) {
      int64_t X, Y;
      tiling::triangle_coords(bp, nb, X, Y);
      const bool same = X == Y;
      const int64_t nx = tiling::block_layers(X, L, Lb), ny = same ? 0 : tiling::block_layers(Y, L, Lb);
      const int64_t slots = blocked::slot_count(nx, ny, same);
      for (int64_t zg = 0; zg < zmax; ++zg) {
        if (zg >= blocked::z_groups(nx, ny, same)) continue;
        std::vector<S> stage(kRows * kT * slots, S(0));
        std::vector<double> acc(blocked::kThreads * 16, 0.0), dacc(blocked::kThreads * 16, 0.0);
        for (int s0 = 0; s0 < kT && I * kT + s0 < n; s0 += kRows) {
          for (int64_t slot = 0; slot < slots; ++slot) {
            const int64_t l = blocked::slot_layer(slot, X, Y, L, Lb);
            if (l < 0) continue;
            for (int rr = 0; rr < kRows; ++rr)
              for (int lane = 0; lane < kT; ++lane) {
                const int64_t i = I * kT + s0 + rr, j = J * kT + lane;
                stage[blocked::stage_offset(rr, lane, slot, slots)] =
                    blocked::staged_entry(i, j, n, unbiased) ? S(gram_entry(l, i, j)) : S(0);
              }
          }
          for (int th = 0; th < blocked::kThreads; ++th) {
            const int r = blocked::row_group(th);
            const int64_t k = blocked::thread_register_block(th, zg);
            if (k >= blocked::register_blocks(nx, ny, same)) continue;
            int a0, b0;
            blocked::register_block_slots(k, nx, ny, same, a0, b0);
            CHECK(a0 + kReg <= slots && b0 + kReg <= slots, "blocked: slots %d %d of %ld", a0, b0, long(slots));
            const int64_t i = I * kT + s0 + r;
            const int diag = (I == J && i < n) ? s0 + r : -1;
            blocked::accumulate_row(stage.data() + blocked::stage_offset(r, 0, 0, slots), slots, a0, b0, diag,
                                    acc.data() + th * 16, dacc.data() + th * 16);
          }
        }
        for (int e = 0; e < blocked::kBlocksPerRow * 16; ++e) {
          const int q = e / 16, p = e % 16;
          const int64_t kq = zg * blocked::kBlocksPerRow + q;
          if (kq >= blocked::register_blocks(nx, ny, same)) continue;
          int qa0, qb0;
          blocked::register_block_slots(kq, nx, ny, same, qa0, qb0);
          int64_t ga, gb;
          if (!blocked::block_pair(qa0, qb0, p / kReg, p % kReg, X, Y, L, Lb, same, ga, gb)) continue;
          double total = 0.0;
          for (int g = 0; g < kRows; ++g) {
            const int th = g * blocked::kBlocksPerRow + q;
            total += 2.0 * acc[th * 16 + p] - dacc[th * 16 + p];
          }
          got[ga * L + gb] += total;
          ++tile_writes[ga * L + gb];
        }
      }
    }
    for (int64_t a = 0; a < L; ++a)
      for (int64_t b = a; b < L; ++b)
        CHECK(tile_writes[a * L + b] == 1, "blocked L=%ld n=%ld tile %ld: pair (%ld, %ld) written %d times", long(L),
              long(n), long(t), long(a), long(b), tile_writes[a * L + b]);
  }
  for (int64_t a = 0; a < L; ++a)
    for (int64_t b = a; b < L; ++b) {
      double want = 0.0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
          if (math::entry_counts(i, j, unbiased))
            want += double(S(gram_entry(a, i, j))) * double(S(gram_entry(b, i, j)));
      CHECK(std::fabs(got[a * L + b] - want) <= 1e-11 * (1.0 + std::fabs(want)),
            "blocked L=%ld n=%ld T=%ld unbiased=%d pair (%ld, %ld): %.15g vs %.15g", long(L), long(n), long(T),
            int(unbiased), long(a), long(b), got[a * L + b], want);
    }
}

void test_blocked() {
  const int64_t roomy = 227 * 1024;  // sm_90's opt-in shared memory per block
  for (int64_t L : {1, 2, 3, 4, 5, 7, 9, 13, 24}) {
    for (int64_t n : {4, 5, 8, 9, 31, 32, 33, 40, 70}) {
      check_blocked<float>(L, n, n, n % 2 == 0, roomy);
      if (failures) return;
    }
  }
  check_blocked<double>(6, 37, 37, true, roomy);
  check_blocked<double>(33, 20, 20, false, roomy);
  check_blocked<float>(5, 21, 64, true, roomy);  // a short sequence in a padded slot
  // Layer blocks: a budget that takes only a few layers at once.
  for (int64_t lb : {1, 3, 4, 6}) {
    const int64_t budget = blocked::shared_bytes(blocked::slot_count(lb, lb, false), lb, sizeof(float));
    CHECK(blocked::layer_block_size(23, budget, sizeof(float)) == lb, "blocked: Lb for budget %ld", long(budget));
    check_blocked<float>(23, 35, 35, lb % 2 == 1, budget);
    if (failures) return;
  }
  // sm_90: 24 layers in one block; float32 Grams hold about 180 layers per block, float64 about 100.
  CHECK(blocked::layer_block_size(24, roomy, 4) == 24 && blocked::layer_block_size(300, roomy, 4) < 150,
        "blocked: sm_90 layer blocks");
  CHECK(tiling::layer_block_size(300, tiling::layers_per_block(roomy, 65 * 8)) == 300 &&
            tiling::layers_per_block(roomy, 65 * 8) >= 446,
        "tiled: sm_90 takes about 446 layers per block");
}

// _cosine_sums on CUDA: lanes per pair, the staged slice and the token blocks.
void test_cosine_geometry() {
  for (int64_t K = 1; K <= 128; ++K) {
    const int64_t P = sim::pair_count(K);
    const int lanes = sim::lanes_per_pair(P, 256);
    CHECK(lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0 && (lanes == 1 || 256 / lanes >= P),
          "K=%ld: %d lanes per pair", long(K), lanes);
    CHECK(lanes == 32 || 256 / (2 * lanes) < P, "K=%ld: %d lanes is not the most", long(K), lanes);
    for (int64_t D : {1, 7, 64, 576, 4096, 8192}) {
      const int64_t w = sim::stage_width(K, D, 32 * 1024, 4);
      CHECK(w >= 1 && w <= D && (w == D || (w % 32 == 1 && K * w * 4 <= 32 * 1024) || w == 1), "K=%ld D=%ld: width %ld",
            long(K), long(D), long(w));
    }
  }
  for (int64_t N : {1, 2, 100, 1023, 1024, 1025, 100000})
    for (int64_t P : {1, 561, 8256}) {
      const int64_t G = sim::token_blocks(N, P);
      CHECK(G >= 1 && G <= N && G <= 1024 && G * 16 * P <= (int64_t(64) << 20) + 16 * P, "N=%ld P=%ld: %ld blocks",
            long(N), long(P), long(G));
      int64_t next = 0;
      for (int64_t g = 0; g < G; ++g) {
        int64_t i0, i1;
        tiling::split_rows(N, G, g, i0, i1);
        CHECK(i0 == next && i1 >= i0, "N=%ld G=%ld block %ld", long(N), long(G), long(g));
        next = i1;
      }
      CHECK(next == N, "N=%ld: tokens covered %ld", long(N), long(next));
    }
}

}  // namespace

int main() {
  test_triangle_coords();
  test_pair_chunks();
  test_split_rows();
  test_row_sums();
  test_layer_blocks();
  test_blocked();
  test_cosine_geometry();
  if (failures) {
    std::printf("%d tiling check(s) failed\n", failures);
    return 1;
  }
  std::printf("tiling: all checks passed\n");
  return 0;
}

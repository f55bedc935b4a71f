// sgemm throughput: oneDNN (what Sgemm uses) against OpenBLAS on the same shapes, so the
// library choice in the README can be re-measured:  bazel run //stability/ops/cpu:gemm_benchmark
//
// Shapes: 1024³, and the linear layers of the mid-size preset (B·T = 4096 tokens,
// width 512: QKV 512→1536, FC1 512→2048, FC2 2048→512) in the forward orientation
// (x·Wᵀ). Counters: FLOP/s (2·M·N·K per call). Both libraries run with the machine's
// environment as it is (OPENBLAS_* variables untouched) and all cores.
#include <cblas.h>
#include <omp.h>

#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "stability/ops/cpu/gemm.h"

namespace stability::cpu {
namespace {

// OpenBLAS's worker threads keep spinning between calls and would take a core from every
// other benchmark of the suite (the FMA peak measured 119 instead of 208 GFLOP/s): one
// thread outside its own benchmark, all cores inside.
const bool kOpenBlasQuiet = [] {
  openblas_set_num_threads(1);
  return true;
}();

struct Operands {
  std::vector<float> a, b, c;
  Operands(int64_t m, int64_t n, int64_t k) : a(m * k), b(n * k), c(m * n) {
    std::mt19937 rng(0);
    std::uniform_real_distribution<float> d(-1, 1);
    for (float& x : a) x = d(rng);
    for (float& x : b) x = d(rng);
  }
};

// args: M, N, K; B is stored [N, K] and used transposed (a linear layer's weight).
void BM_Sgemm_OneDnn(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  Operands op(m, n, k);
  for (auto _ : state) {
    if (!Sgemm(Trans::kNo, Trans::kYes, m, n, k, 1.0f, op.a.data(), k, op.b.data(), k, 0.0f,
               op.c.data(), n)
             .ok()) {
      state.SkipWithError("Sgemm failed");
      return;
    }
    benchmark::DoNotOptimize(op.c.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Sgemm_OpenBlas(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  Operands op(m, n, k);
  openblas_set_num_threads(omp_get_max_threads());
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, op.a.data(), k,
                op.b.data(), k, 0.0f, op.c.data(), n);
    benchmark::DoNotOptimize(op.c.data());
  }
  openblas_set_num_threads(1);
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
}

void Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"M", "N", "K"});
  b->Args({1024, 1024, 1024});
  b->Args({4096, 1536, 512});  // QKV
  b->Args({4096, 2048, 512});  // FC1
  b->Args({4096, 512, 2048});  // FC2
  b->UseRealTime()->MinTime(0.5);
}

BENCHMARK(BM_Sgemm_OneDnn)->Apply(Shapes);
BENCHMARK(BM_Sgemm_OpenBlas)->Apply(Shapes);

}  // namespace
}  // namespace stability::cpu

BENCHMARK_MAIN();

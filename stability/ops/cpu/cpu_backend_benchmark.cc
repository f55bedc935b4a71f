// The elementwise kernels of cpu_backend.cc (GELU, AdamW), and the machine's peak (peak.h)
// as benchmarks of their own, so the suite's output states what peak_frac is relative to.
#include <cmath>
#include <vector>

#include "benchmark/benchmark.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/internal/benchmark_util.h"

namespace stability::ops::cpu {
namespace {

using internal::kShapes;
using internal::Random;
using internal::Report;
using internal::Shape;

void BM_Gelu(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::vector<float> x = Random(n), y(n), dx(n);
  CpuBackend& be = GetCpuBackend();
  for (auto _ : state) {
    be.ActivationForward(Activation::kGelu, x.data(), n, y.data());
    be.ActivationBackward(Activation::kGelu, x.data(), y.data(), n, dx.data());
  }
  Report(state, 30.0 * n, 5.0 * n * 4);
}
BENCHMARK(BM_Gelu)->Arg(8 * 64 * 256)->Arg(2 * 512 * 2048)->UseRealTime();

// args: parameters (mid: 51 M). Reads p, g, m, v and writes p, m, v: memory-bound.
void BM_AdamW(benchmark::State& state) {
  const int64_t n = state.range(0);
  std::vector<float> p = Random(n), g = Random(n), m(n, 0.0f), v(n, 0.0f);
  CpuBackend& be = GetCpuBackend();
  for (auto _ : state) {
    be.AdamW(p.data(), g.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 0.3f, 1.0f);
  }
  Report(state, 14.0 * n, 7.0 * n * 4);
}
BENCHMARK(BM_AdamW)->Arg(51 * 1000 * 1000)->UseRealTime();

void BM_PeakFma(benchmark::State& state) {
  for (auto _ : state) state.counters["FLOP/s"] = stability::cpu::MeasureFmaPeakFlops();
}
BENCHMARK(BM_PeakFma)->Iterations(1)->UseRealTime();

void BM_MemoryBandwidth(benchmark::State& state) {
  for (auto _ : state) state.counters["bytes/s"] = stability::cpu::MeasureMemoryBandwidth();
}
BENCHMARK(BM_MemoryBandwidth)->Iterations(1)->UseRealTime();

}  // namespace
}  // namespace stability::ops::cpu

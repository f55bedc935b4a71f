// What the CPU kernel benchmarks share: the preset shapes, random inputs, and the
// counters (FLOP/s, bytes/s, fraction of the measured fp32 FMA peak, peak.h). The suite:
//   bazel run //stability/ops/cpu:benchmarks    (every *_benchmark.cc of this package)
#ifndef STABILITY_OPS_CPU_INTERNAL_BENCHMARK_UTIL_H_
#define STABILITY_OPS_CPU_INTERNAL_BENCHMARK_UTIL_H_

#include <cstdint>
#include <vector>

#include "benchmark/benchmark.h"
#include "stability/base/rng.h"
#include "stability/ops/cpu/peak.h"

namespace stability::ops::cpu::internal {

// Measured once, on first use (after gemm_benchmark.cc has quietened OpenBLAS's threads).
inline double Peak() {
  static const double peak = stability::cpu::MeasureFmaPeakFlops();
  return peak;
}

inline std::vector<float> Random(int64_t n) {
  Rng rng(1);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Normal());
  return v;
}

inline void Report(benchmark::State& state, double flops, double bytes) {
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] = benchmark::Counter(flops / Peak(), benchmark::Counter::kIsIterationInvariantRate);
}

// tiny (B 8 × T 64, C 64, 4 heads) and mid (B 2 × T 512, C 512, 8 heads), GPT-2 vocabulary.
struct Shape {
  int64_t b, t, h, hd, v;
};
inline constexpr Shape kShapes[] = {{8, 64, 4, 16, 50257}, {2, 512, 8, 64, 50257}};

}  // namespace stability::ops::cpu::internal

#endif  // STABILITY_OPS_CPU_INTERNAL_BENCHMARK_UTIL_H_

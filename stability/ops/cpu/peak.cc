#include "stability/ops/cpu/peak.h"

#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <vector>

namespace stability::cpu {
namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 10 independent accumulators hide the FMA latency (4 cycles × 2 ports ≥ 8 in flight).
__attribute__((target("avx2,fma"))) float FmaLoop(int64_t iterations) {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

}  // namespace

double MeasureFmaPeakFlops(int threads) {
  const int n = threads > 0 ? threads : omp_get_max_threads();
  constexpr int64_t kIterations = 20'000'000;  // per thread: 10 × 8 lanes × 2 FLOP each
  volatile float sink = 0;
  FmaLoop(kIterations / 20);  // warm up clocks
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(n)
  {
    const float r = FmaLoop(kIterations);
#pragma omp critical
    sink = sink + r;
  }
  const double s = Seconds(t0);
  return static_cast<double>(n) * kIterations * 10 * 8 * 2 / s;
}

double MeasureMemoryBandwidth(int threads) {
  const int n = threads > 0 ? threads : omp_get_max_threads();
  const int64_t count = 64ll << 20;  // 256 MiB per buffer
  std::vector<float> src(count, 1.0f), dst(count, 0.0f);
  const auto t0 = std::chrono::steady_clock::now();
  constexpr int kRepeats = 3;
  for (int r = 0; r < kRepeats; ++r) {
#pragma omp parallel for num_threads(n) schedule(static)
    for (int64_t i = 0; i < count; ++i) dst[i] = src[i] * 1.0001f;
  }
  const double s = Seconds(t0);
  return kRepeats * 2.0 * count * sizeof(float) / s;
}

}  // namespace stability::cpu

// Cross-entropy forward + backward over the 50,257-wide GPT-2 vocabulary (cross_entropy.cc).
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

void BM_CrossEntropy(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const int64_t n = s.b * s.t;
  std::vector<float> logits = Random(n * s.v), lse(n), dlogits(n * s.v);
  std::vector<int32_t> targets(n, 7);
  CpuBackend& be = GetCpuBackend();
  for (auto _ : state) {
    CrossEntropyStats stats;
    be.CrossEntropyForward(logits.data(), targets.data(), n, s.v, {}, lse.data(), &stats);
    be.CrossEntropyBackward(logits.data(), targets.data(), lse.data(), n, s.v, {}, 1.0f, dlogits.data());
  }
  Report(state, 6.0 * n * s.v, 3.0 * n * s.v * 4);
}
BENCHMARK(BM_CrossEntropy)->ArgNames({"mid"})->Arg(0)->Arg(1)->UseRealTime();

}  // namespace
}  // namespace stability::ops::cpu

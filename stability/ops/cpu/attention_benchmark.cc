// Attention forward and backward (attention.cc) at the tiny and mid shapes.
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

// args: shape index, backward (0/1)
void BM_Attention(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const bool backward = state.range(1) == 1;
  const int64_t c = s.h * s.hd, n = s.b * s.t * c;
  std::vector<float> q = Random(n), k = Random(n), v = Random(n), out(n), probs(s.b * s.h * s.t * s.t), lse(s.b * s.h * s.t), dq(n), dk(n),
                     dv(n);
  AttentionOptions opt;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  const AttentionStrides ld = AttentionStrides::Contiguous(c);
  CpuBackend& be = GetCpuBackend();
  be.AttentionForward(q.data(), k.data(), v.data(), s.b, s.t, s.h, s.hd, opt, ld, out.data(), probs.data(), lse.data(),
                      nullptr, nullptr, nullptr);
  for (auto _ : state) {
    if (backward) {
      be.AttentionBackward(q.data(), k.data(), v.data(), out.data(), probs.data(), lse.data(), out.data(), s.b, s.t,
                           s.h, s.hd, opt, ld, nullptr, dq.data(), dk.data(), dv.data());
    } else {
      be.AttentionForward(q.data(), k.data(), v.data(), s.b, s.t, s.h, s.hd, opt, ld, out.data(), probs.data(),
                          lse.data(), nullptr, nullptr, nullptr);
    }
  }
  // Useful (causal) FLOPs: forward 2 GEMMs of T²·hd/2 each, backward 4.
  const double flops = (backward ? 4.0 : 2.0) * 2.0 * s.b * s.h * s.t * s.t / 2 * s.hd;
  Report(state, flops, (backward ? 7.0 : 4.0) * n * 4 + s.b * s.h * s.t * s.t * 4.0);
}
BENCHMARK(BM_Attention)->ArgNames({"mid", "backward"})->ArgsProduct({{0, 1}, {0, 1}})->UseRealTime();

}  // namespace
}  // namespace stability::ops::cpu

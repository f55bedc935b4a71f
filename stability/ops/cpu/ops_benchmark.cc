// Microbenchmarks of the CPU kernels at the shapes the presets use, with FLOP/s, bytes/s
// and the fraction of the measured fp32 FMA peak (peak.h):
//   bazel run //stability/ops/cpu:benchmarks            (also runs the GEMM library comparison)
// Shapes: tiny (B 8 × T 64, C 64, 4 heads, V 50257) and mid (B 2 × T 512, C 512, 8 heads).
#include <cmath>
#include <vector>

#include "benchmark/benchmark.h"
#include "stability/base/rng.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/peak.h"

namespace stability::ops::cpu {
namespace {

// Measured once, on first use (after gemm_benchmark.cc has quietened OpenBLAS's threads).
double Peak() {
  static const double peak = stability::cpu::MeasureFmaPeakFlops();
  return peak;
}

std::vector<float> Random(int64_t n) {
  Rng rng(1);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Normal());
  return v;
}

void Report(benchmark::State& state, double flops, double bytes) {
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_frac"] =
      benchmark::Counter(flops / Peak(), benchmark::Counter::kIsIterationInvariantRate);
}

struct Shape {
  int64_t b, t, h, hd, v;
};
const Shape kShapes[] = {{8, 64, 4, 16, 50257}, {2, 512, 8, 64, 50257}};

// args: shape index, backward (0/1)
void BM_Attention(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const bool backward = state.range(1) == 1;
  const int64_t c = s.h * s.hd, n = s.b * s.t * c;
  std::vector<float> q = Random(n), k = Random(n), v = Random(n), out(n), probs(s.b * s.h * s.t * s.t), lse(s.b * s.h * s.t), dq(n), dk(n),
                     dv(n);
  AttentionOptions opt;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  CpuBackend& be = GetCpuBackend();
  be.AttentionForward(q.data(), k.data(), v.data(), s.b, s.t, s.h, s.hd, opt, out.data(), probs.data(), lse.data(), nullptr);
  for (auto _ : state) {
    if (backward) {
      be.AttentionBackward(q.data(), k.data(), v.data(), probs.data(), lse.data(), out.data(), s.b, s.t, s.h, s.hd, opt, dq.data(),
                           dk.data(), dv.data());
    } else {
      be.AttentionForward(q.data(), k.data(), v.data(), s.b, s.t, s.h, s.hd, opt, out.data(), probs.data(), lse.data(), nullptr);
    }
  }
  // Useful (causal) FLOPs: forward 2 GEMMs of T²·hd/2 each, backward 4.
  const double flops = (backward ? 4.0 : 2.0) * 2.0 * s.b * s.h * s.t * s.t / 2 * s.hd;
  Report(state, flops, (backward ? 7.0 : 4.0) * n * 4 + s.b * s.h * s.t * s.t * 4.0);
}
BENCHMARK(BM_Attention)->ArgNames({"mid", "backward"})->ArgsProduct({{0, 1}, {0, 1}})->UseRealTime();

// args: shape index, per_head (0: rows of width C, as n1/n2; 1: rows of width head_dim, as
// the QK norms).
void BM_LayerNorm(benchmark::State& state) {
  const Shape s = kShapes[state.range(0)];
  const bool per_head = state.range(1) == 1;
  const int64_t rows = s.b * s.t * (per_head ? s.h : 1), d = per_head ? s.hd : s.h * s.hd;
  std::vector<float> x = Random(rows * d), g(d, 1.0f), b(d, 0.0f), y(rows * d), mean(rows), rstd(rows), dx(rows * d),
                     dg(d), db(d);
  CpuBackend& be = GetCpuBackend();
  for (auto _ : state) {
    be.NormForward(NormKind::kLayerNorm, x.data(), g.data(), b.data(), rows, d, 1e-5f, y.data(), mean.data(), rstd.data());
    be.NormBackward(NormKind::kLayerNorm, x.data(), g.data(), mean.data(), rstd.data(), y.data(), rows, d, dx.data(),
                    dg.data(), db.data());
  }
  Report(state, 16.0 * rows * d, 5.0 * rows * d * 4);
}
BENCHMARK(BM_LayerNorm)->ArgNames({"mid", "per_head"})->ArgsProduct({{0, 1}, {0, 1}})->UseRealTime();

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

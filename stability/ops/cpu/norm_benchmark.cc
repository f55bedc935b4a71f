// LayerNorm forward + backward (norm.cc): full-width rows and per-head rows.
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
    be.NormForward(NormKind::kLayerNorm, x.data(), RowLayout::Contiguous(d), g.data(), b.data(), rows, d, 1e-5f,
                   y.data(), mean.data(), rstd.data(), nullptr);
    be.NormBackward(NormKind::kLayerNorm, x.data(), RowLayout::Contiguous(d), g.data(), mean.data(), rstd.data(),
                    y.data(), rows, d, dx.data(), dg.data(), db.data(), nullptr);
  }
  Report(state, 16.0 * rows * d, 5.0 * rows * d * 4);
}
BENCHMARK(BM_LayerNorm)->ArgNames({"mid", "per_head"})->ArgsProduct({{0, 1}, {0, 1}})->UseRealTime();

}  // namespace
}  // namespace stability::ops::cpu

// LayerNorm and RMSNorm over rows of width D (per-head norms are rows of width head_dim).
// Row statistics are accumulated in double (SIMD lanes, a fixed order); the parameter
// gradients run over blocks of columns with the rows in order, so loads stay contiguous
// and the sums do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/internal/op_profile.h"

namespace stability::ops::cpu {

namespace {

// One row: statistics in double, in a fixed order (SIMD lanes).
void NormRow(bool layer, const float* xr, const float* g, const float* b, int64_t d, float eps, float* yr, float* mean,
             float* rstd) {
  double mu = 0;
  if (layer) {
#pragma omp simd reduction(+ : mu)
    for (int64_t j = 0; j < d; ++j) mu += xr[j];
    mu /= d;
  }
  double var = 0;
#pragma omp simd reduction(+ : var)
  for (int64_t j = 0; j < d; ++j) var += (xr[j] - mu) * (xr[j] - mu);
  var /= d;
  const float rs = static_cast<float>(1.0 / std::sqrt(var + eps));
  const float m = static_cast<float>(mu);
  if (b) {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - m) * rs * g[j] + b[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - m) * rs * g[j];
  }
  if (mean) *mean = m;
  *rstd = rs;
}

}  // namespace

void CpuBackend::NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b,
                             int64_t rows, int64_t d, float eps, float* y, float* mean, float* rstd,
                             Bf16Operands* /*next: nothing kept*/) {
  internal::OpScope scope("NormForward");
  const bool layer = kind == NormKind::kLayerNorm;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    NormRow(layer, x + x_rows.Offset(r, d), g, b, d, eps, y + r * d, mean ? mean + r : nullptr, rstd + r);
  }
}

// The row's sum is normalised while it is still in cache: one pass over memory, not two.
// x + a·s is not contracted to an FMA (-ffp-contract=off, .bazelrc): ChannelScaleForward's bits.
void CpuBackend::AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g,
                                const float* b, int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean,
                                float* rstd, Bf16Operands* /*next: nothing kept*/) {
  internal::OpScope scope("AddNormForward");
  const bool layer = kind == NormKind::kLayerNorm;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = sum + r * d;
    const float* xr = x + r * d;
    const float* ar = a + r * d;
    if (s) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) sr[j] = xr[j] + ar[j] * s[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) sr[j] = xr[j] + ar[j];
    }
    NormRow(layer, sr, g, b, d, eps, y + r * d, mean ? mean + r : nullptr, rstd + r);
  }
}

namespace {

// dx (laid out as x) overwritten, or added to (accumulate: the residual stream's gradient).
void NormBackwardRows(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                      const float* rstd, const float* dy, int64_t rows, int64_t d, bool accumulate, float* dx,
                      float* dg, float* db) {
  const bool layer = kind == NormKind::kLayerNorm;
  // dx = r·(ĝ − [LayerNorm] mean(ĝ) − x̂·mean(ĝ·x̂)),  ĝ = dy·g,  x̂ = (x − μ)·r
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + x_rows.Offset(r, d);
    const float* dyr = dy + r * d;
    const float m = layer ? mean[r] : 0.0f, rs = rstd[r];
    double mean_g = 0, mean_gx = 0;
#pragma omp simd reduction(+ : mean_g, mean_gx)
    for (int64_t j = 0; j < d; ++j) {
      const double gh = dyr[j] * g[j];
      mean_g += gh;
      mean_gx += gh * (xr[j] - m) * rs;
    }
    const float mg = layer ? static_cast<float>(mean_g / d) : 0.0f;
    const float mgx = static_cast<float>(mean_gx / d);
    float* dxr = dx + x_rows.Offset(r, d);
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      const float xh = (xr[j] - m) * rs;
      const float v = rs * (dyr[j] * g[j] - mg - xh * mgx);
      dxr[j] = accumulate ? dxr[j] + v : v;
    }
  }
  // Parameter gradients dg = Σ_rows dy·x̂, db = Σ_rows dy: a fixed grid of row chunks ×
  // 64-column blocks (enough tasks for per-head norms, whose rows are only 64 wide), each
  // summing its rows in order; then the chunks in order. Independent of the thread count.
  constexpr int64_t kCols = 64, kRowChunks = 16;
  const int64_t col_blocks = (d + kCols - 1) / kCols;
  std::vector<double> part_g(kRowChunks * d), part_b(kRowChunks * d);
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < kRowChunks * col_blocks; ++task) {
    const int64_t chunk = task / col_blocks, j0 = (task % col_blocks) * kCols;
    const int64_t w = std::min(kCols, d - j0);
    double sg[kCols] = {}, sb[kCols] = {};
    for (int64_t r = rows * chunk / kRowChunks; r < rows * (chunk + 1) / kRowChunks; ++r) {
      const float* xr = x + x_rows.Offset(r, d) + j0;
      const float* dyr = dy + r * d + j0;
      const float m = layer ? mean[r] : 0.0f, rs = rstd[r];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        sg[j] += static_cast<double>(dyr[j]) * ((xr[j] - m) * rs);
        sb[j] += dyr[j];
      }
    }
    std::copy(sg, sg + w, part_g.begin() + chunk * d + j0);
    std::copy(sb, sb + w, part_b.begin() + chunk * d + j0);
  }
  for (int64_t j = 0; j < d; ++j) {
    double sg = 0, sb = 0;
    for (int64_t c = 0; c < kRowChunks; ++c) sg += part_g[c * d + j], sb += part_b[c * d + j];
    dg[j] += static_cast<float>(sg);
    if (db) db[j] += static_cast<float>(sb);
  }
}

}  // namespace

void CpuBackend::NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                              const float* rstd, const float* dy, int64_t rows, int64_t d, float* dx, float* dg,
                              float* db, Bf16Operands*) {
  internal::OpScope scope("NormBackward");
  NormBackwardRows(kind, x, x_rows, g, mean, rstd, dy, rows, d, /*accumulate=*/false, dx, dg, db);
}

void CpuBackend::AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                                 const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db,
                                 const Bf16Operands* from, Bf16Operands*) {
  internal::OpScope scope("AddNormBackward");
  if (from && from->dx) throw std::logic_error("AddNormBackward: a bf16 dy for the CPU, which keeps no bf16 operands");
  NormBackwardRows(kind, sum, RowLayout::Contiguous(d), g, mean, rstd, dy, rows, d, /*accumulate=*/true, dsum, dg, db);
}

}  // namespace stability::ops::cpu

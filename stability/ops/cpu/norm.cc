// LayerNorm and RMSNorm over rows of width D (per-head norms are rows of width head_dim).
#include <cmath>

#include "stability/ops/cpu/cpu_backend.h"

namespace stability::ops::cpu {

void CpuBackend::NormForward(NormKind kind, const float* x, const float* g, const float* b, int64_t rows, int64_t d,
                             float eps, float* y, float* mean, float* rstd) {
  const bool layer = kind == NormKind::kLayerNorm;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    double mu = 0;
    if (layer) {
      for (int64_t j = 0; j < d; ++j) mu += xr[j];
      mu /= d;
    }
    double var = 0;
    for (int64_t j = 0; j < d; ++j) var += (xr[j] - mu) * (xr[j] - mu);
    var /= d;
    const float rs = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float m = static_cast<float>(mu);
    float* yr = y + r * d;
    for (int64_t j = 0; j < d; ++j) yr[j] = (xr[j] - m) * rs * g[j] + (b ? b[j] : 0.0f);
    if (mean) mean[r] = m;
    rstd[r] = rs;
  }
}

void CpuBackend::NormBackward(NormKind kind, const float* x, const float* g, const float* mean, const float* rstd,
                              const float* dy, int64_t rows, int64_t d, float* dx, float* dg, float* db) {
  const bool layer = kind == NormKind::kLayerNorm;
  // dx = r·(ĝ − [LayerNorm] mean(ĝ) − x̂·mean(ĝ·x̂)),  ĝ = dy·g,  x̂ = (x − μ)·r
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    const float* dyr = dy + r * d;
    const float m = layer ? mean[r] : 0.0f, rs = rstd[r];
    double mean_g = 0, mean_gx = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double gh = dyr[j] * g[j];
      mean_g += gh;
      mean_gx += gh * (xr[j] - m) * rs;
    }
    mean_g /= d;
    mean_gx /= d;
    if (!layer) mean_g = 0;
    float* dxr = dx + r * d;
    for (int64_t j = 0; j < d; ++j) {
      const float xh = (xr[j] - m) * rs;
      dxr[j] = rs * (dyr[j] * g[j] - static_cast<float>(mean_g) - xh * static_cast<float>(mean_gx));
    }
  }
  // Parameter gradients: parallel over columns, rows in order (deterministic).
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < d; ++j) {
    double sg = 0, sb = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float xh = (x[r * d + j] - (layer ? mean[r] : 0.0f)) * rstd[r];
      sg += static_cast<double>(dy[r * d + j]) * xh;
      sb += dy[r * d + j];
    }
    dg[j] += static_cast<float>(sg);
    if (db) db[j] += static_cast<float>(sb);
  }
}

}  // namespace stability::ops::cpu

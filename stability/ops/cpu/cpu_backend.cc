// Elementwise, embedding, linear, layer-scale, σ-reparam and reduction kernels, and the
// backend's registration. Attention, norms and cross-entropy have files of their own.
#include "stability/ops/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "stability/ops/cpu/gemm.h"
#include "stability/ops/cpu/internal/op_profile.h"
#include "stability/ops/cpu/internal/vec_math.h"

namespace stability::ops::cpu {

using stability::cpu::Sgemm;
using stability::cpu::Trans;

CpuBackend& GetCpuBackend() {
  static CpuBackend backend;
  return backend;
}

namespace {
// Registered before main(): the CPU backend is always there.
const bool kRegistered = [] {
  RegisterBackend(DeviceType::kCpu, &GetCpuBackend());
  return true;
}();

// Deterministic parallel sum: fixed chunks (independent of the thread count), each summed
// by `chunk_sum(lo, hi)`, chunks added in order.
template <typename F>
double ChunkedSum(int64_t n, F chunk_sum) {
  constexpr int kChunks = 64;
  double partial[kChunks] = {};
#pragma omp parallel for schedule(static)
  for (int c = 0; c < kChunks; ++c) partial[c] = chunk_sum(n * c / kChunks, n * (c + 1) / kChunks);
  double total = 0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

void CpuBackend::EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe,
                                  int64_t c, float* out) {
  internal::OpScope scope("EmbeddingForward");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* e = wte + static_cast<int64_t>(ids[i]) * c;
    const float* p = wpe ? wpe + (i % t) * c : nullptr;
    float* o = out + i * c;
    for (int64_t j = 0; j < c; ++j) o[j] = e[j] + (p ? p[j] : 0.0f);
  }
}

void CpuBackend::EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c,
                                   float* dwte, float* dwpe) {
  internal::OpScope scope("EmbeddingBackward");
  // Parallel over channel blocks: no two threads touch one row of dwte/dwpe's columns.
  constexpr int64_t kBlock = 16;
#pragma omp parallel for schedule(static)
  for (int64_t j0 = 0; j0 < c; j0 += kBlock) {
    const int64_t j1 = std::min(c, j0 + kBlock);
    for (int64_t i = 0; i < n; ++i) {
      const float* d = dout + i * c;
      float* e = dwte + static_cast<int64_t>(ids[i]) * c;
      for (int64_t j = j0; j < j1; ++j) e[j] += d[j];
      if (dwpe) {
        float* p = dwpe + (i % t) * c;
        for (int64_t j = j0; j < j1; ++j) p[j] += d[j];
      }
    }
  }
}

void CpuBackend::LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out,
                               float* y, Bf16Operands* /*kept: fp32 only*/, Bf16Operands* /*next: fp32 only*/) {
  internal::OpScope scope("LinearForward");
  // Arguments are checked by the caller; Sgemm cannot fail on them.
  (void)Sgemm(Trans::kNo, Trans::kYes, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  if (b) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < out; ++j) y[i * out + j] += b[j];
  }
}

void CpuBackend::LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out,
                                float* dx, float* dw, float* db, const Bf16Operands* /*kept: fp32 only*/) {
  internal::OpScope scope("LinearBackward");
  if (dx) (void)Sgemm(Trans::kNo, Trans::kNo, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
  (void)Sgemm(Trans::kYes, Trans::kNo, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  if (db) {  // column sums, rows in order, over blocks of 64 columns (contiguous loads)
    constexpr int64_t kCols = 64;
#pragma omp parallel for schedule(static)
    for (int64_t j0 = 0; j0 < out; j0 += kCols) {
      const int64_t w = std::min(kCols, out - j0);
      float s[kCols] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float* row = dy + i * out + j0;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) s[j] += row[j];
      }
      for (int64_t j = 0; j < w; ++j) db[j0 + j] += s[j];
    }
  }
}

void CpuBackend::Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h, int64_t hd,
                      float base, bool inverse) {
  internal::OpScope scope("Rope");
  const int64_t half = hd / 2;
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
  for (int64_t pos = 0; pos < t; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      const double theta = pos * std::pow(static_cast<double>(base), -2.0 * i / hd);
      const float c = static_cast<float>(std::cos(theta)), s = sign * static_cast<float>(std::sin(theta));
      for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t hi = 0; hi < h; ++hi) {
          const float* xr = x + (bi * t + pos) * x_ld + hi * hd;
          float* yr = y + (bi * t + pos) * y_ld + hi * hd;
          const float x1 = xr[i], x2 = xr[i + half];
          yr[i] = x1 * c - x2 * s;
          yr[i + half] = x1 * s + x2 * c;
        }
      }
    }
  }
}

namespace {
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr int64_t kChunk = 4096;  // elements per OpenMP task: a multiple of 8, fits L1

// y = f(x) on 8 lanes, chunks spread over the threads.
template <typename F>
void ParallelMap8(const float* x, int64_t n, float* y, F f) {
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < (n + kChunk - 1) / kChunk; ++chunk) {
    const int64_t lo = chunk * kChunk;
    internal::Map8(x + lo, std::min(kChunk, n - lo), y + lo, f);
  }
}
}  // namespace

void CpuBackend::ActivationForward(Activation act, const float* x, int64_t n, float* y) {
  internal::OpScope scope("ActivationForward");
  if (act == Activation::kRelu) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : 0.0f;
    return;
  }
  // GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
  ParallelMap8(x, n, y, [](__m256 v) {
    const __m256 inner = _mm256_mul_ps(_mm256_set1_ps(kGeluScale),
                                       _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v),
                                                       _mm256_mul_ps(v, v), v));
    const __m256 half_v = _mm256_mul_ps(_mm256_set1_ps(0.5f), v);
    return _mm256_fmadd_ps(half_v, internal::Tanh8(inner), half_v);
  });
}

void CpuBackend::ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) {
  internal::OpScope scope("ActivationBackward");
  if (act == Activation::kRelu) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0 ? dy[i] : 0.0f;
    return;
  }
  // d/dx = 0.5·(1 + th) + 0.5·x·(1 − th²)·√(2/π)·(1 + 3·0.044715·x²),  th = tanh(u),
  // u = √(2/π)·(x + 0.044715·x³). 1 − th² from th cancels where |u| is large (|x| ≳ 2): a
  // 2.5e-7 error of th became 1.5e-5 in the gradient. From e = exp(−2|u|) instead:
  // th = sign(u)·(1 − e)/(1 + e), 1 − th² = 4e/(1 + e)², within 2e-7 of the exact gradient.
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < (n + kChunk - 1) / kChunk; ++chunk) {
    const int64_t lo = chunk * kChunk;
    internal::Map8x2(x + lo, dy + lo, std::min(kChunk, n - lo), dx + lo, [](__m256 v, __m256 g) {
      const __m256 v2 = _mm256_mul_ps(v, v);
      const __m256 c = _mm256_set1_ps(0.044715f);
      const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f), sign = _mm256_set1_ps(-0.0f);
      const __m256 u = _mm256_mul_ps(_mm256_set1_ps(kGeluScale), _mm256_fmadd_ps(_mm256_mul_ps(c, v), v2, v));
      const __m256 e = internal::Exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_andnot_ps(sign, u)));
      const __m256 d = _mm256_add_ps(one, e);
      const __m256 th = _mm256_or_ps(_mm256_div_ps(_mm256_sub_ps(one, e), d), _mm256_and_ps(sign, u));
      const __m256 sech2 = _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(4.0f), e), _mm256_mul_ps(d, d));
      const __m256 dinner =
          _mm256_mul_ps(_mm256_set1_ps(kGeluScale), _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(3.0f), c), v2, one));
      const __m256 dth = _mm256_mul_ps(sech2, dinner);
      return _mm256_mul_ps(g,
                           _mm256_fmadd_ps(_mm256_mul_ps(half, v), dth, _mm256_mul_ps(half, _mm256_add_ps(one, th))));
    });
  }
}

void CpuBackend::Add(const float* x, const float* a, int64_t n, float* y) {
  internal::OpScope scope("Add");
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] + a[i];
}

void CpuBackend::AddInPlace(float* y, const float* x, int64_t n) {
  internal::OpScope scope("AddInPlace");
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void CpuBackend::Copy(const float* x, int64_t n, float* y) {
  internal::OpScope scope("Copy");
  std::memcpy(y, x, n * sizeof(float));
}

bool CpuBackend::StartKernelProfile() {
  internal::OpProfile::Get().Start();
  return true;
}

std::vector<Backend::KernelTime> CpuBackend::StopKernelProfile() {
  std::vector<KernelTime> rows;
  for (internal::OpProfile::Row& r : internal::OpProfile::Get().Stop())
    rows.push_back({std::move(r.name), r.calls, r.ms});
  return rows;
}

void CpuBackend::ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) {
  internal::OpScope scope("ChannelScaleForward");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) y[i * c + j] = x[i * c + j] * s[j];
}

void CpuBackend::ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx,
                                      float* ds, Bf16Operands*) {
  internal::OpScope scope("ChannelScaleBackward");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) dx[i * c + j] = dy[i * c + j] * s[j];
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < c; ++j) {
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(dy[i * c + j]) * x[i * c + j];
    ds[j] += static_cast<float>(acc);
  }
}

void CpuBackend::SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u,
                                     float* v, float* sigma_out, float* w_eff) {
  internal::OpScope scope("SigmaReparamForward");
  // Matrix-vector products as GEMMs with one column (oneDNN, all threads).
  const auto normalize = [this](float* x, int64_t n) {
    const double norm = std::sqrt(SumSquares(x, n));
    Scale(x, n, static_cast<float>(1.0 / std::max(norm, 1e-12)));
  };
  std::vector<float> wv(out);
  if (update) {
    (void)Sgemm(Trans::kYes, Trans::kNo, in, 1, out, 1.0f, w, in, u, 1, 0.0f, v, 1);  // v ← wᵀu
    normalize(v, in);
  }
  (void)Sgemm(Trans::kNo, Trans::kNo, out, 1, in, 1.0f, w, in, v, 1, 0.0f, wv.data(), 1);  // w v
  if (update) {
    std::copy(wv.begin(), wv.end(), u);  // u ← normalize(w v)
    normalize(u, out);
  }
  double sigma = 0;  // uᵀ w v
  for (int64_t i = 0; i < out; ++i) sigma += static_cast<double>(u[i]) * wv[i];
  const float scale = static_cast<float>(*g / sigma);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < out * in; ++i) w_eff[i] = scale * w[i];
  *sigma_out = static_cast<float>(sigma);
}

void CpuBackend::SigmaReparamBackward(const float* w, const float* g_in, const float* sigma_in, const float* u,
                                      const float* v, const float* dw_eff, int64_t out, int64_t in, float* dw,
                                      float* dg) {
  internal::OpScope scope("SigmaReparamBackward");
  const float g = *g_in, sigma = *sigma_in;
  const double gw =
      ChunkedSum(out * in, [&](int64_t lo, int64_t hi) { return internal::DotF64(dw_eff + lo, w + lo, hi - lo); });
  const float a = g / sigma;
  const float b = static_cast<float>(g * gw / (static_cast<double>(sigma) * sigma));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) dw[i * in + j] += a * dw_eff[i * in + j] - b * u[i] * v[j];
  *dg += static_cast<float>(gw / sigma);
}

void CpuBackend::AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                       float eps, float weight_decay, float bias_correction1, float bias_correction2,
                       float grad_scale) {
  internal::OpScope scope("AdamW");
  const float step_size = lr / bias_correction1;
  const float sqrt_bc2 = std::sqrt(bias_correction2);
  const float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * grad_scale;
    m[i] = beta1 * m[i] + (1.0f - beta1) * g;
    v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
    p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i]) / sqrt_bc2 + eps);
  }
}

double CpuBackend::SumSquares(const float* x, int64_t n) {
  internal::OpScope scope("SumSquares");
  return ChunkedSum(n, [x](int64_t lo, int64_t hi) { return internal::DotF64(x + lo, x + lo, hi - lo); });
}

double CpuBackend::MeanRowNorm(const float* x, int64_t rows, int64_t d) {
  internal::OpScope scope("MeanRowNorm");
  if (rows == 0) return 0;
  const double total = ChunkedSum(rows, [x, d](int64_t lo, int64_t hi) {
    double s = 0;
    for (int64_t r = lo; r < hi; ++r) s += std::sqrt(internal::DotF64(x + r * d, x + r * d, d));
    return s;
  });
  return total / rows;
}

void CpuBackend::Scale(float* x, int64_t n, float s) {
  internal::OpScope scope("Scale");
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace stability::ops::cpu

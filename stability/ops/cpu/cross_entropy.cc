// Cross-entropy with the final-logit soft cap and z-loss (math in ops/backend.h), on 8
// lanes (internal/vec_math.h): at GPT-2's 50,257-wide rows this is the widest elementwise
// work of a step.
#include <algorithm>
#include <cmath>
#include <limits>

#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/internal/op_profile.h"
#include "stability/ops/cpu/internal/scratch.h"
#include "stability/ops/cpu/internal/vec_math.h"
#include "stability/ops/row_stats.h"

namespace stability::ops::cpu {
namespace {

using internal::Exp8;
using internal::Map8;
using internal::Tanh8;

inline __m256 Cap8(__m256 l, float cap) {
  return _mm256_mul_ps(_mm256_set1_ps(cap), Tanh8(_mm256_mul_ps(l, _mm256_set1_ps(1.0f / cap))));
}
inline float Cap(float l, float cap) {
  return cap > 0 ? _mm256_cvtss_f32(Cap8(_mm256_set1_ps(l), cap)) : l;
}

// Σ exp(z − zmax) over a row; the tail padded with −inf (exp → 0). Every term is in (0, 1],
// so fp32 lanes lose < 1e-6 relative.
float RowSumExp(const float* z, int64_t v, float zmax) {
  const __m256 shift = _mm256_set1_ps(zmax);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= v; j += 8) acc = _mm256_add_ps(acc, Exp8(_mm256_sub_ps(_mm256_loadu_ps(z + j), shift)));
  if (j < v) {
    alignas(32) float buf[8];
    std::fill(buf, buf + 8, -std::numeric_limits<float>::infinity());
    std::copy(z + j, z + v, buf);
    acc = _mm256_add_ps(acc, Exp8(_mm256_sub_ps(_mm256_load_ps(buf), shift)));
  }
  return internal::Sum8(acc);
}

}  // namespace

void CpuBackend::CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                                     const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) {
  internal::OpScope scope("CrossEntropyForward");
  std::vector<float> row_max(n);
#pragma omp parallel
  {
    float* z = opt.soft_cap > 0 ? internal::ThreadScratch(internal::kCappedLogits, v) : nullptr;  // the capped row
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* l = logits + i * v;
      const float lmax = internal::MaxOf(l, v);
      const float* zr = l;
      float zmax = lmax;  // tanh is monotonic: the cap keeps the argmax
      if (opt.soft_cap > 0) {
        Map8(l, v, z, [&](__m256 x) { return Cap8(x, opt.soft_cap); });
        zr = z;
        zmax = Cap(lmax, opt.soft_cap);
      }
      lse[i] = zmax + std::log(RowSumExp(zr, v, zmax));
      row_max[i] = lmax;
    }
  }
  if (!stats) return;
  std::vector<float> target_z(n);
  for (int64_t i = 0; i < n; ++i) target_z[i] = Cap(logits[i * v + targets[i]], opt.soft_cap);
  *stats = CrossEntropyStatsFromRows(lse, target_z.data(), row_max.data(), n, opt.z_loss);
}

void CpuBackend::CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n,
                                      int64_t v, const CrossEntropyOptions& opt, float dloss, float* dlogits) {
  internal::OpScope scope("CrossEntropyBackward");
  // dz_j = (softmax_j·(1 + 2·z_loss·lse) − [j = target]) · dloss / N;  dl = dz·(1 − tanh²(l/cap))
  const float inv_n = dloss / static_cast<float>(n);
  const float cap = opt.soft_cap;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* l = logits + i * v;
    float* d = dlogits + i * v;
    const __m256 row_lse = _mm256_set1_ps(lse[i]);
    const __m256 scale = _mm256_set1_ps((1.0f + 2.0f * opt.z_loss * lse[i]) * inv_n);
    const __m256 one = _mm256_set1_ps(1.0f), inv_cap = _mm256_set1_ps(cap > 0 ? 1.0f / cap : 0.0f);
    const __m256 capv = _mm256_set1_ps(cap);
    if (cap > 0) {
      // The target's −1, through the same cap derivative (its logit read first: d may be l).
      const float th_target = internal::Tanh(l[targets[i]] * (1.0f / cap));
      Map8(l, v, d, [&](__m256 x) {
        const __m256 th = Tanh8(_mm256_mul_ps(x, inv_cap));
        const __m256 p = Exp8(_mm256_sub_ps(_mm256_mul_ps(capv, th), row_lse));
        return _mm256_mul_ps(_mm256_mul_ps(p, scale), _mm256_fnmadd_ps(th, th, one));
      });
      d[targets[i]] -= inv_n * (1.0f - th_target * th_target);
    } else {
      Map8(l, v, d, [&](__m256 x) { return _mm256_mul_ps(Exp8(_mm256_sub_ps(x, row_lse)), scale); });
      d[targets[i]] -= inv_n;
    }
  }
}

}  // namespace stability::ops::cpu

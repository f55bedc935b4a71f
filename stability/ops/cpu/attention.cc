// Causal multi-head attention with every softmax option (see AttentionOptions in
// ops/backend.h for the math), as GEMMs per (batch, head) — the llm.c / FlashAttention
// split of work, on the CPU: one (batch, head) per OpenMP task, single-threaded oneDNN
// GEMMs inside it, the elementwise softmax transforms between them.
//
// Forward, per (b, h):  A = scale·Q Kᵀ (T×T, GEMM);  per row t ≤ T: z = cap(A/τ), p = softmax,
// p' = clip(p);  O = P' V (GEMM).  probs keeps p for backward.
// Backward:  dP' = dO Vᵀ (GEMM);  dV = P'ᵀ dO (GEMM);  dP = clip'(p)·dP';
// dZ = p∘(dP − Σ p∘dP);  dA = dZ·cap'(·)/τ with cap' = 1 − (z/c)², z = log p + lse (no
// second Q Kᵀ);  dQ = scale·dA K (GEMM);  dK = scale·dAᵀ Q (GEMM).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/gemm.h"
#include "stability/ops/cpu/internal/op_profile.h"
#include "stability/ops/cpu/internal/scratch.h"
#include "stability/ops/cpu/internal/vec_math.h"
#include "stability/ops/row_stats.h"

namespace stability::ops::cpu {
namespace {

using stability::cpu::Sgemm;
using stability::cpu::Trans;

using internal::Exp8;
using internal::Map8;
using internal::Sum8;

// a → z for 8 logits: temperature, then the soft cap.
inline __m256 Transform8(__m256 a, const AttentionOptions& opt) {
  const __m256 u = _mm256_div_ps(a, _mm256_set1_ps(opt.temperature));
  if (opt.soft_cap <= 0) return u;
  return _mm256_mul_ps(_mm256_set1_ps(opt.soft_cap),
                       internal::Tanh8(_mm256_mul_ps(u, _mm256_set1_ps(1.0f / opt.soft_cap))));
}

inline float Clip(float p, const AttentionOptions& opt) {
  return std::clamp((opt.clip_zeta - opt.clip_gamma) * p + opt.clip_gamma, 0.0f, 1.0f);
}

// Causal GEMMs touch the full T×T square; masked entries are ignored or zeroed.
// Runs `body(bh, tile0, tile1)` for every (batch, head) with per-thread T×T scratch tiles.
template <typename Body>
void ForEachHead(int64_t bh_count, int64_t t, Body body) {
#pragma omp parallel
  {
    float* tile0 = internal::ThreadScratch(internal::kAttentionTile0, t * t);
    float* tile1 = internal::ThreadScratch(internal::kAttentionTile1, t * t);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < bh_count; ++bh) body(bh, tile0, tile1);
  }
}

}  // namespace

void CpuBackend::AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                  int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                                  float* probs, float* lse, AttentionStats* stats, Bf16Operands* /*kept: fp32*/,
                                  Bf16Operands* /*next: fp32*/) {
  internal::OpScope scope("AttentionForward");
  const int64_t c = h * hd;
  const bool transform = opt.temperature != 1.0f || opt.soft_cap > 0;
  std::vector<float> max_logit(b * h, -std::numeric_limits<float>::infinity());
  std::vector<double> entropy(b * h, 0.0);
  ForEachHead(b * h, t, [&](int64_t bh, float* tile0, float*) {
    const int64_t bi = bh / h, hi = bh % h;
    const float* qb = q + bi * t * ld.q + hi * hd;
    const float* kb = k + bi * t * ld.k + hi * hd;
    const float* vb = v + bi * t * ld.v + hi * hd;
    float* p = probs + bh * t * t;
    float* pc = opt.clip ? tile0 : p;  // P' (clipped) when it differs from P
    (void)Sgemm(Trans::kNo, Trans::kYes, t, t, hd, opt.scale, qb, ld.q, kb, ld.k, 0.0f, p, t);  // A
    double ent = 0;
    float mx = max_logit[bh];
    for (int64_t ti = 0; ti < t; ++ti) {
      float* row = p + ti * t;
      const int64_t len = ti + 1;  // causal: s ≤ t
      mx = std::max(mx, internal::MaxOf(row, len));
      if (transform) Map8(row, len, row, [&](__m256 a) { return Transform8(a, opt); });
      const float zmax = internal::MaxOf(row, len);
      // e = exp(z − zmax) in place; Σe and Σ e·(z − zmax) give lse and the entropy
      // H = −Σ p·log p = log Σe − Σ e·(z − zmax) / Σe  (no log per element).
      const __m256 shift = _mm256_set1_ps(zmax);
      __m256 sum8 = _mm256_setzero_ps(), ez8 = _mm256_setzero_ps();
      auto step = [&](__m256 z) {
        const __m256 d = _mm256_sub_ps(z, shift);
        const __m256 e = Exp8(d);
        sum8 = _mm256_add_ps(sum8, e);
        ez8 = _mm256_fmadd_ps(e, d, ez8);
        return e;
      };
      int64_t s = 0;
      for (; s + 8 <= len; s += 8) _mm256_storeu_ps(row + s, step(_mm256_loadu_ps(row + s)));
      if (s < len) {  // tail padded with a finite −1e30: e = 0 and e·d = 0
        alignas(32) float buf[8];
        std::fill(buf, buf + 8, -1e30f);
        std::copy(row + s, row + len, buf);
        _mm256_store_ps(buf, step(_mm256_load_ps(buf)));
        std::copy(buf, buf + (len - s), row + s);
      }
      const float sum = Sum8(sum8);
      const float inv = 1.0f / sum;
      const float log_sum = std::log(sum);
      lse[bh * t + ti] = zmax + log_sum;
      ent += static_cast<double>(log_sum) - static_cast<double>(Sum8(ez8)) * inv;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) row[j] *= inv;
      std::fill(row + len, row + t, 0.0f);
      if (opt.clip) {
        float* crow = pc + ti * t;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) crow[j] = Clip(row[j], opt);
        std::fill(crow + len, crow + t, 0.0f);
      }
    }
    max_logit[bh] = mx;
    entropy[bh] = ent;
    (void)Sgemm(Trans::kNo, Trans::kNo, t, hd, t, 1.0f, pc, t, vb, ld.v, 0.0f, out + bi * t * c + hi * hd, c);  // O
  });
  if (stats) *stats = AttentionStatsFromRows(entropy.data(), max_logit.data(), b * h);  // per head
}

void CpuBackend::AttentionBackward(const float* q, const float* k, const float* v,
                                   const float* /*out: the probs
suffice*/, const float* probs, const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                   const AttentionOptions& opt, const AttentionStrides& ld,
                                   const Bf16Operands* /*kept: fp32*/, float* dq, float* dk, float* dv) {
  internal::OpScope scope("AttentionBackward");
  const int64_t c = h * hd;
  const float clip_a = opt.clip_zeta - opt.clip_gamma;
  // tile0: dP' then dA; tile1: P' (clip).
  ForEachHead(b * h, t, [&](int64_t bh, float* tile0, float* tile1) {
    const int64_t bi = bh / h, hi = bh % h;
    const int64_t off = bi * t * c + hi * hd;  // of out and dout
    const auto at = [&](int64_t stride) { return bi * t * stride + hi * hd; };
    const float* p = probs + bh * t * t;
    float* dp = tile0;
    float* aux = tile1;
    const float* pc = p;
    if (opt.clip) {
      for (int64_t ti = 0; ti < t; ++ti)
        for (int64_t s = 0; s < t; ++s) aux[ti * t + s] = s <= ti ? Clip(p[ti * t + s], opt) : 0.0f;
      pc = aux;
    }
    (void)Sgemm(Trans::kNo, Trans::kYes, t, t, hd, 1.0f, dout + off, c, v + at(ld.v), ld.v, 0.0f, dp, t);  // dP'
    (void)Sgemm(Trans::kYes, Trans::kNo, t, hd, t, 1.0f, pc, t, dout + off, c, 0.0f, dv + at(ld.dv), ld.dv);  // dV
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* prow = p + ti * t;
      float* drow = dp + ti * t;
      if (opt.clip) {
        for (int64_t s = 0; s <= ti; ++s) {
          const float pre = clip_a * prow[s] + opt.clip_gamma;
          drow[s] = (pre > 0.0f && pre < 1.0f) ? clip_a * drow[s] : 0.0f;
        }
      }
      float pdp = 0;
#pragma omp simd reduction(+ : pdp)
      for (int64_t s = 0; s <= ti; ++s) pdp += prow[s] * drow[s];
      const float row_lse = lse[bh * t + ti];
      const float inv_temp = 1.0f / opt.temperature;
      if (opt.soft_cap > 0) {
        // cap' = 1 − th², th = tanh(u/c) = z/c = (log p + lse)/c; p below FLT_MIN (0 after
        // exp underflow) contributes nothing and has no usable log. Tail padded with p = 0.
        const __m256 lse8 = _mm256_set1_ps(row_lse), inv_c = _mm256_set1_ps(1.0f / opt.soft_cap);
        const __m256 pdp8 = _mm256_set1_ps(pdp), one = _mm256_set1_ps(1.0f), it8 = _mm256_set1_ps(inv_temp);
        const __m256 tiny = _mm256_set1_ps(std::numeric_limits<float>::min());
        internal::Map8x2(prow, drow, ti + 1, drow, [&](__m256 p8, __m256 d8) {
          const __m256 th = _mm256_mul_ps(_mm256_add_ps(internal::Log8(p8), lse8), inv_c);
          const __m256 dz = _mm256_mul_ps(_mm256_mul_ps(p8, _mm256_sub_ps(d8, pdp8)), _mm256_fnmadd_ps(th, th, one));
          return _mm256_and_ps(_mm256_cmp_ps(p8, tiny, _CMP_GE_OQ), _mm256_mul_ps(dz, it8));
        });
      } else {
#pragma omp simd
        for (int64_t s = 0; s <= ti; ++s) drow[s] = prow[s] * (drow[s] - pdp) * inv_temp;
      }
      std::fill(drow + ti + 1, drow + t, 0.0f);
    }
    // dQ = scale·dA K;  dK = scale·dAᵀ Q
    (void)Sgemm(Trans::kNo, Trans::kNo, t, hd, t, opt.scale, dp, t, k + at(ld.k), ld.k, 0.0f, dq + at(ld.dq), ld.dq);
    (void)Sgemm(Trans::kYes, Trans::kNo, t, hd, t, opt.scale, dp, t, q + at(ld.q), ld.q, 0.0f, dk + at(ld.dk), ld.dk);
  });
}

}  // namespace stability::ops::cpu

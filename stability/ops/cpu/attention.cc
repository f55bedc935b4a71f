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

namespace stability::ops::cpu {
namespace {

using stability::cpu::Sgemm;
using stability::cpu::Trans;

// a → z for one logit: temperature, then the soft cap.
inline float Transform(float a, const AttentionOptions& opt) {
  const float u = a / opt.temperature;
  return opt.soft_cap > 0 ? opt.soft_cap * std::tanh(u / opt.soft_cap) : u;
}

inline float Clip(float p, const AttentionOptions& opt) {
  return std::clamp((opt.clip_zeta - opt.clip_gamma) * p + opt.clip_gamma, 0.0f, 1.0f);
}

// Causal GEMMs touch the full T×T square; masked entries are ignored or zeroed.
// Runs `body(bh, scratch)` for every (batch, head) with per-thread T×T scratch buffers.
template <typename Body>
void ForEachHead(int64_t bh_count, int64_t t, int buffers, Body body) {
#pragma omp parallel
  {
    std::vector<std::vector<float>> scratch(buffers, std::vector<float>(t * t));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < bh_count; ++bh) body(bh, scratch);
  }
}

}  // namespace

void CpuBackend::AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                  int64_t hd, const AttentionOptions& opt, float* out, float* probs, float* lse,
                                  AttentionStats* stats) {
  const int64_t c = h * hd;
  std::vector<float> max_logit(b * h, -std::numeric_limits<float>::infinity());
  std::vector<double> entropy(b * h, 0.0);
  ForEachHead(b * h, t, 1, [&](int64_t bh, std::vector<std::vector<float>>& scratch) {
    const int64_t bi = bh / h, hi = bh % h;
    const float* qb = q + bi * t * c + hi * hd;
    const float* kb = k + bi * t * c + hi * hd;
    const float* vb = v + bi * t * c + hi * hd;
    float* p = probs + bh * t * t;
    float* pc = opt.clip ? scratch[0].data() : p;  // P' (clipped) when it differs from P
    (void)Sgemm(Trans::kNo, Trans::kYes, t, t, hd, opt.scale, qb, c, kb, c, 0.0f, p, t);  // A
    double ent = 0;
    float mx = max_logit[bh];
    for (int64_t ti = 0; ti < t; ++ti) {
      float* row = p + ti * t;
      float zmax = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s <= ti; ++s) {
        mx = std::max(mx, row[s]);
        row[s] = Transform(row[s], opt);
        zmax = std::max(zmax, row[s]);
      }
      float sum = 0;
      for (int64_t s = 0; s <= ti; ++s) {
        row[s] = std::exp(row[s] - zmax);
        sum += row[s];
      }
      const float inv = 1.0f / sum;
      lse[bh * t + ti] = zmax + std::log(sum);
      for (int64_t s = 0; s <= ti; ++s) {
        row[s] *= inv;
        if (row[s] > 0) ent -= static_cast<double>(row[s]) * std::log(row[s]);
      }
      std::fill(row + ti + 1, row + t, 0.0f);
      if (opt.clip) {
        float* crow = pc + ti * t;
        for (int64_t s = 0; s <= ti; ++s) crow[s] = Clip(row[s], opt);
        std::fill(crow + ti + 1, crow + t, 0.0f);
      }
    }
    max_logit[bh] = mx;
    entropy[bh] = ent;
    (void)Sgemm(Trans::kNo, Trans::kNo, t, hd, t, 1.0f, pc, t, vb, c, 0.0f, out + bi * t * c + hi * hd, c);  // O
  });
  if (stats) {
    stats->max_logit = *std::max_element(max_logit.begin(), max_logit.end());
    stats->entropy_sum = 0;
    for (double e : entropy) stats->entropy_sum += e;
  }
}

void CpuBackend::AttentionBackward(const float* q, const float* k, const float* v, const float* probs,
                                   const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                   const AttentionOptions& opt, float* dq, float* dk, float* dv) {
  const int64_t c = h * hd;
  const float clip_a = opt.clip_zeta - opt.clip_gamma;
  // scratch[0]: dP' then dA; scratch[1]: P' (clip).
  ForEachHead(b * h, t, 2, [&](int64_t bh, std::vector<std::vector<float>>& scratch) {
    const int64_t bi = bh / h, hi = bh % h;
    const int64_t off = bi * t * c + hi * hd;
    const float* p = probs + bh * t * t;
    float* dp = scratch[0].data();
    float* aux = scratch[1].data();
    const float* pc = p;
    if (opt.clip) {
      for (int64_t ti = 0; ti < t; ++ti)
        for (int64_t s = 0; s < t; ++s) aux[ti * t + s] = s <= ti ? Clip(p[ti * t + s], opt) : 0.0f;
      pc = aux;
    }
    (void)Sgemm(Trans::kNo, Trans::kYes, t, t, hd, 1.0f, dout + off, c, v + off, c, 0.0f, dp, t);  // dP'
    (void)Sgemm(Trans::kYes, Trans::kNo, t, hd, t, 1.0f, pc, t, dout + off, c, 0.0f, dv + off, c);  // dV
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
      for (int64_t s = 0; s <= ti; ++s) pdp += prow[s] * drow[s];
      const float row_lse = lse[bh * t + ti];
      for (int64_t s = 0; s <= ti; ++s) {
        float dz = prow[s] * (drow[s] - pdp);
        if (opt.soft_cap > 0 && dz != 0.0f) {  // p = 0 contributes nothing (and has no log)
          const float th = (std::log(prow[s]) + row_lse) / opt.soft_cap;  // tanh(u/c) = z/c
          dz *= 1.0f - th * th;
        }
        drow[s] = dz / opt.temperature;
      }
      std::fill(drow + ti + 1, drow + t, 0.0f);
    }
    (void)Sgemm(Trans::kNo, Trans::kNo, t, hd, t, opt.scale, dp, t, k + off, c, 0.0f, dq + off, c);   // dQ
    (void)Sgemm(Trans::kYes, Trans::kNo, t, hd, t, opt.scale, dp, t, q + off, c, 0.0f, dk + off, c);  // dK
  });
}

}  // namespace stability::ops::cpu

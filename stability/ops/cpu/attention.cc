// Causal multi-head attention with every softmax option (see AttentionOptions in
// ops/backend.h for the math). One (batch, head) per OpenMP task; probs hold p.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "stability/ops/cpu/cpu_backend.h"

namespace stability::ops::cpu {
namespace {

// a → z for one logit: temperature, then the soft cap.
inline float Transform(float a, const AttentionOptions& opt) {
  float u = a / opt.temperature;
  return opt.soft_cap > 0 ? opt.soft_cap * std::tanh(u / opt.soft_cap) : u;
}

inline float Clip(float p, const AttentionOptions& opt) {
  return std::clamp((opt.clip_zeta - opt.clip_gamma) * p + opt.clip_gamma, 0.0f, 1.0f);
}

}  // namespace

void CpuBackend::AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                  int64_t hd, const AttentionOptions& opt, float* out, float* probs,
                                  AttentionStats* stats) {
  const int64_t c = h * hd;
  std::vector<float> max_logit(b * h, -std::numeric_limits<float>::infinity());
  std::vector<double> entropy(b * h, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < b * h; ++bh) {
    const int64_t bi = bh / h, hi = bh % h;
    std::vector<float> z(t);
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* qt = q + (bi * t + ti) * c + hi * hd;
      float* p = probs + (bh * t + ti) * t;
      float zmax = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s <= ti; ++s) {
        const float* ks = k + (bi * t + s) * c + hi * hd;
        float dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += qt[i] * ks[i];
        const float a = dot * opt.scale;
        max_logit[bh] = std::max(max_logit[bh], a);
        z[s] = Transform(a, opt);
        zmax = std::max(zmax, z[s]);
      }
      float sum = 0;
      for (int64_t s = 0; s <= ti; ++s) {
        p[s] = std::exp(z[s] - zmax);
        sum += p[s];
      }
      const float inv = 1.0f / sum;
      double ent = 0;
      for (int64_t s = 0; s <= ti; ++s) {
        p[s] *= inv;
        if (p[s] > 0) ent -= static_cast<double>(p[s]) * std::log(p[s]);
      }
      for (int64_t s = ti + 1; s < t; ++s) p[s] = 0;
      entropy[bh] += ent;
      float* o = out + (bi * t + ti) * c + hi * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t s = 0; s <= ti; ++s) {
        const float ps = opt.clip ? Clip(p[s], opt) : p[s];
        const float* vs = v + (bi * t + s) * c + hi * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += ps * vs[i];
      }
    }
  }
  if (stats) {
    stats->max_logit = *std::max_element(max_logit.begin(), max_logit.end());
    stats->entropy_sum = 0;
    for (double e : entropy) stats->entropy_sum += e;
  }
}

void CpuBackend::AttentionBackward(const float* q, const float* k, const float* v, const float* probs,
                                   const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                   const AttentionOptions& opt, float* dq, float* dk, float* dv) {
  const int64_t c = h * hd;
  const float clip_a = opt.clip_zeta - opt.clip_gamma;
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < b * h; ++bh) {
    const int64_t bi = bh / h, hi = bh % h;
    // This task owns the (bi, hi) slices of dq, dk and dv.
    for (int64_t ti = 0; ti < t; ++ti) {
      std::fill_n(dq + (bi * t + ti) * c + hi * hd, hd, 0.0f);
      std::fill_n(dk + (bi * t + ti) * c + hi * hd, hd, 0.0f);
      std::fill_n(dv + (bi * t + ti) * c + hi * hd, hd, 0.0f);
    }
    std::vector<float> dp(t);
    for (int64_t ti = 0; ti < t; ++ti) {
      const float* qt = q + (bi * t + ti) * c + hi * hd;
      const float* dot = dout + (bi * t + ti) * c + hi * hd;
      const float* p = probs + (bh * t + ti) * t;
      // dp'_s = dout_t · v_s,  dv_s += p'_s · dout_t,  then through the clip.
      for (int64_t s = 0; s <= ti; ++s) {
        const float* vs = v + (bi * t + s) * c + hi * hd;
        float* dvs = dv + (bi * t + s) * c + hi * hd;
        float d = 0;
        for (int64_t i = 0; i < hd; ++i) d += dot[i] * vs[i];
        float ps = p[s];
        if (opt.clip) {
          const float pre = clip_a * p[s] + opt.clip_gamma;
          ps = std::clamp(pre, 0.0f, 1.0f);
          d = (pre > 0.0f && pre < 1.0f) ? clip_a * d : 0.0f;
        }
        for (int64_t i = 0; i < hd; ++i) dvs[i] += ps * dot[i];
        dp[s] = d;
      }
      // softmax: dz_s = p_s (dp_s − Σ_j p_j dp_j)
      float pdp = 0;
      for (int64_t s = 0; s <= ti; ++s) pdp += p[s] * dp[s];
      float* dqt = dq + (bi * t + ti) * c + hi * hd;
      for (int64_t s = 0; s <= ti; ++s) {
        float dz = p[s] * (dp[s] - pdp);
        if (dz == 0.0f) continue;
        const float* ks = k + (bi * t + s) * c + hi * hd;
        if (opt.soft_cap > 0) {  // z = cap·tanh(u/cap): dz/du = 1 − tanh²(u/cap)
          float dotqk = 0;
          for (int64_t i = 0; i < hd; ++i) dotqk += qt[i] * ks[i];
          const float th = std::tanh(dotqk * opt.scale / opt.temperature / opt.soft_cap);
          dz *= 1.0f - th * th;
        }
        const float da = dz / opt.temperature * opt.scale;  // includes d(a)/d(q·k)
        float* dks = dk + (bi * t + s) * c + hi * hd;
        for (int64_t i = 0; i < hd; ++i) {
          dqt[i] += da * ks[i];
          dks[i] += da * qt[i];
        }
      }
    }
  }
}

}  // namespace stability::ops::cpu

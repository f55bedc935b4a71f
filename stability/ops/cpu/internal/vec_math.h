// exp and tanh on 8 fp32 lanes (AVX2 + FMA, the build's -march=x86-64-v3), for the
// elementwise passes that libm's scalar expf/tanhf dominated (GELU, cross-entropy, the
// attention softmax: 14% of a mid training step in `perf`).
//
// Exp8: Cephes' expf. x = n·ln2 + r with n = round(x / ln2) and |r| ≤ ln2/2 (ln2 split in
//   a high part exact in fp32 and a low correction), e^r by a degree-7 polynomial
//   (Cephes' minimax coefficients), 2^n assembled in the exponent bits. Within 2 ulp of
//   libm on [-87.3, 88.3]; below -87.3 (where the result would be subnormal) it returns 0,
//   above 88.3 it saturates at e^88.3; NaN stays NaN (divergence must stay visible).
// Tanh8: a [13/6] odd/even rational minimax approximation on [-7.9, 7.9] (the form Eigen
//   uses), ±(1 − 3e-7) beyond and never past ±1; x itself for |x| < 4e-4 where tanh(x) = x in fp32. Absolute error
//   below 1e-6 everywhere (vec_math_test checks both against libm on a dense grid).
//
// The array forms run the tail through the same 8-lane code on a padded copy, so an
// element's result never depends on its position or the array length (bitwise-stable
// results for any thread split).
#ifndef STABILITY_OPS_CPU_INTERNAL_VEC_MATH_H_
#define STABILITY_OPS_CPU_INTERNAL_VEC_MATH_H_

#include <immintrin.h>

#include <cstdint>

namespace stability::ops::cpu::internal {

inline __m256 Exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 lo = _mm256_set1_ps(-87.3365447504f);  // e^lo = FLT_MIN
  // min/max return their second operand when either is NaN: x second keeps NaN.
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-88.0f), _mm256_min_ps(hi, x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n + 127 in the exponent field (n ≥ -127 here, so the field stays in [0, 255]).
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  // 0 below FLT_MIN; NaN compares false
}

inline __m256 Tanh8(__m256 x) {
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-7.90531110763549805f),
                                  _mm256_min_ps(_mm256_set1_ps(7.90531110763549805f), x));
  const __m256 x2 = _mm256_mul_ps(xc, xc);
  __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(2.00018790482477e-13f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(-8.60467152213735e-11f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(5.12229709037114e-08f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(1.48572235717979e-05f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(6.37261928875436e-04f));
  p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(4.89352455891786e-03f));
  p = _mm256_mul_ps(xc, p);
  __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(1.18534705686654e-04f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(2.26843463243900e-03f));
  q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(4.89352518554385e-03f));
  // |y| ≤ 1 exactly, so 1 − tanh² (the derivative everywhere) is never negative.
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 y = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), one), _mm256_min_ps(one, _mm256_div_ps(p, q)));
  const __m256 abs_x = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  const __m256 tiny = _mm256_cmp_ps(abs_x, _mm256_set1_ps(4e-4f), _CMP_LT_OQ);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_blendv_ps(y, x, _mm256_or_ps(tiny, nan));
}

// Log8: Cephes' logf. x = 2^e·m with m in [√½, √2), log(1 + (m − 1)) by a degree-9
// polynomial, e·ln2 added in two parts. For positive normal x (the attention backward's
// probabilities): within 2 ulp of libm. 0, subnormals, negatives and NaN are the caller's
// to mask.
inline __m256 Log8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(
      _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));  // x = 2^e·m, m in [½, 1)
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  // m < √½: use 2m − 1 and e − 1, so the argument stays in [√½ − 1, √2 − 1).
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
  m = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(m, y));
}

// The scalar forms, through the same lanes (for the odd element and for tests).
inline float Exp(float x) { return _mm256_cvtss_f32(Exp8(_mm256_set1_ps(x))); }
inline float Tanh(float x) { return _mm256_cvtss_f32(Tanh8(_mm256_set1_ps(x))); }
inline float Log(float x) { return _mm256_cvtss_f32(Log8(_mm256_set1_ps(x))); }

// y[i] = f(x[i]) for i < n, 8 lanes at a time; the tail through a padded copy.
template <typename F>
inline void Map8(const float* x, int64_t n, float* y, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = i; j < n; ++j) buf[j - i] = x[j];
    _mm256_store_ps(buf, f(_mm256_load_ps(buf)));
    for (int64_t j = i; j < n; ++j) y[j] = buf[j - i];
  }
}

// y[i] = f(a[i], b[i]); y may alias a or b.
template <typename F>
inline void Map8x2(const float* a, const float* b, int64_t n, float* y, F f) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) {
    alignas(32) float ba[8] = {0, 0, 0, 0, 0, 0, 0, 0}, bb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = i; j < n; ++j) ba[j - i] = a[j], bb[j - i] = b[j];
    _mm256_store_ps(ba, f(_mm256_load_ps(ba), _mm256_load_ps(bb)));
    for (int64_t j = i; j < n; ++j) y[j] = ba[j - i];
  }
}

// Horizontal sum and max of 8 lanes, in a fixed order.
inline float Sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
inline float Max8(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// Σ a[i]·b[i] in double (4 + 4 lanes, a fixed order; the tail serially): the reductions
// behind gradient norms and telemetry, where fp32 sums of 25 M terms would lose digits.
inline double DotF64(const float* a, const float* b, int64_t n) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
    lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(va)), _mm256_cvtps_pd(_mm256_castps256_ps128(vb)), lo);
    hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(va, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(vb, 1)),
                         hi);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(lo, hi));
  double s = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// max of x[0..n), 8 lanes then the tail.
inline float MaxOf(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-__builtin_inff());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  float r = Max8(m);
  for (; j < n; ++j) r = x[j] > r ? x[j] : r;
  return r;
}

}  // namespace stability::ops::cpu::internal

#endif  // STABILITY_OPS_CPU_INTERNAL_VEC_MATH_H_

// Exp8 and Tanh8 against libm (in double) on a dense grid, their edge cases, and the
// position independence of Map8.
#include "stability/ops/cpu/internal/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace stability::ops::cpu::internal {
namespace {

TEST(VecMathTest, ExpWithinTwoUlpOfLibm) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 1.37e-4) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    const double ulp = std::nextafter(static_cast<float>(want), std::numeric_limits<float>::infinity()) -
                       static_cast<float>(want);
    worst = std::max(worst, std::abs(Exp(xf) - want) / ulp);
  }
  EXPECT_LE(worst, 2.0);
}

TEST(VecMathTest, ExpEdges) {
  EXPECT_EQ(Exp(0.0f), 1.0f);
  EXPECT_EQ(Exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(Exp(-100.0f), 0.0f);
  EXPECT_TRUE(std::isnan(Exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(Exp(88.3f), 1e38f);
  EXPECT_TRUE(std::isfinite(Exp(1000.0f)));  // saturates (documented)
}

TEST(VecMathTest, TanhWithinOneMillionthOfLibm) {
  double worst_abs = 0, worst_rel = 0;
  for (double x = -10.0; x <= 10.0; x += 3.1e-5) {
    const float xf = static_cast<float>(x);
    const double want = std::tanh(static_cast<double>(xf));
    const double err = std::abs(Tanh(xf) - want);
    worst_abs = std::max(worst_abs, err);
    if (want != 0) worst_rel = std::max(worst_rel, err / std::abs(want));
  }
  EXPECT_LE(worst_abs, 1e-6);
  EXPECT_LE(worst_rel, 4e-6);  // relative too, so small arguments keep their digits
}

TEST(VecMathTest, TanhEdges) {
  EXPECT_EQ(Tanh(0.0f), 0.0f);
  EXPECT_EQ(Tanh(1e-5f), 1e-5f);
  for (float x : {8.0f, 50.0f, std::numeric_limits<float>::infinity()}) {
    EXPECT_LE(Tanh(x), 1.0f) << x;
    EXPECT_GE(Tanh(x), 1.0f - 5e-7f) << x;  // the approximation saturates at 1 − 3e-7
    EXPECT_EQ(Tanh(-x), -Tanh(x)) << x;
  }
  EXPECT_TRUE(std::isnan(Tanh(std::numeric_limits<float>::quiet_NaN())));
}

TEST(VecMathTest, LogWithinTwoUlpOfLibmOnPositiveNormals) {
  double worst = 0;
  for (double lx = std::log(1.2e-38); lx < std::log(3e38); lx += 7.3e-4) {
    const float xf = static_cast<float>(std::exp(lx));
    if (!(xf >= std::numeric_limits<float>::min())) continue;
    const double want = std::log(static_cast<double>(xf));
    const float wf = static_cast<float>(want);
    const double ulp = std::abs(std::nextafter(wf, 2 * wf) - wf);
    if (ulp == 0) continue;  // log(1) = 0
    worst = std::max(worst, std::abs(Log(xf) - want) / ulp);
  }
  EXPECT_LE(worst, 2.0);
  EXPECT_EQ(Log(1.0f), 0.0f);
  EXPECT_NEAR(Log(0.5f), -0.69314718f, 1e-7);
}

TEST(VecMathTest, MapGivesTheSameValueAtEveryPositionAndLength) {
  std::vector<float> x(37);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.37f * static_cast<float>(i) - 6.0f;
  for (int64_t n = 1; n <= 37; ++n) {
    std::vector<float> y(n);
    Map8(x.data(), n, y.data(), Exp8);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], Exp(x[i])) << "n=" << n << " i=" << i;
  }
}

TEST(VecMathTest, DotInDoubleMatchesASerialSum) {
  std::vector<float> a(1003), b(1003);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.1f * i) * 1e3f, b[i] = std::cos(0.07f * i);
  for (int64_t n : {0, 1, 7, 8, 9, 1003}) {
    double want = 0;
    for (int64_t i = 0; i < n; ++i) want += static_cast<double>(a[i]) * b[i];
    EXPECT_NEAR(DotF64(a.data(), b.data(), n), want, 1e-12 * (1 + std::abs(want))) << n;
  }
  EXPECT_EQ(MaxOf(a.data(), 1003), *std::max_element(a.begin(), a.end()));
}

TEST(VecMathTest, HorizontalSumAndMax) {
  const __m256 v = _mm256_setr_ps(1, -2, 3, 8, 5, -6, 7, 0.5f);
  EXPECT_EQ(Sum8(v), 16.5f);
  EXPECT_EQ(Max8(v), 8.0f);
}

}  // namespace
}  // namespace stability::ops::cpu::internal

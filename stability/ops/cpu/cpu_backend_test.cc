// Gradient checks and values of the kernels in cpu_backend.cc.
#include "stability/ops/cpu/cpu_backend.h"

#include <cmath>

#include "gtest/gtest.h"
#include "stability/ops/cpu/grad_check.h"

namespace stability::ops::cpu {
namespace {

CpuBackend& Be() { return GetCpuBackend(); }

TEST(CpuBackendTest, IsRegistered) { EXPECT_EQ(GetBackend(kCpu), &GetCpuBackend()); }

TEST(LinearTest, BackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 5, IN = 4, OUT = 3;
  std::vector<float> x = RandomVector(N * IN, 1), w = RandomVector(OUT * IN, 2), b = RandomVector(OUT, 3);
  const std::vector<float> r = RandomVector(N * OUT, 4);
  std::vector<float> y(N * OUT);
  auto forward = [&] {
    Be().LinearForward(x.data(), w.data(), b.data(), N, IN, OUT, y.data(), nullptr, nullptr);
    return y;
  };
  std::vector<float> dx(x.size()), dw(w.size(), 0.0f), db(b.size(), 0.0f);
  Be().LinearBackward(x.data(), w.data(), r.data(), N, IN, OUT, dx.data(), dw.data(), db.data(), nullptr);
  ExpectGradientsMatch(forward, r, {{"x", &x, &dx}, {"w", &w, &dw}, {"b", &b, &db}});
}

TEST(LinearTest, ParameterGradientsAccumulate) {
  constexpr int64_t N = 3, IN = 2, OUT = 2;
  const std::vector<float> x = RandomVector(N * IN, 1), w = RandomVector(OUT * IN, 2), dy = RandomVector(N * OUT, 3);
  std::vector<float> dw1(OUT * IN, 0.0f), dw2(OUT * IN, 0.0f), db(OUT, 0.0f);
  Be().LinearBackward(x.data(), w.data(), dy.data(), N, IN, OUT, nullptr, dw1.data(), nullptr, nullptr);
  Be().LinearBackward(x.data(), w.data(), dy.data(), N, IN, OUT, nullptr, dw2.data(), db.data(), nullptr);
  Be().LinearBackward(x.data(), w.data(), dy.data(), N, IN, OUT, nullptr, dw2.data(), db.data(), nullptr);
  for (size_t i = 0; i < dw1.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw1[i], 1e-5);
}

TEST(EmbeddingTest, BackwardMatchesFiniteDifferences) {
  constexpr int64_t V = 5, T = 3, N = 6, C = 4;
  const int32_t ids[N] = {1, 4, 1, 0, 1, 3};  // repeated ids accumulate
  std::vector<float> wte = RandomVector(V * C, 1), wpe = RandomVector(T * C, 2);
  const std::vector<float> r = RandomVector(N * C, 3);
  std::vector<float> out(N * C);
  auto forward = [&] {
    Be().EmbeddingForward(ids, N, T, wte.data(), wpe.data(), C, out.data());
    return out;
  };
  std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  Be().EmbeddingBackward(ids, N, T, r.data(), C, dwte.data(), dwpe.data());
  ExpectGradientsMatch(forward, r, {{"wte", &wte, &dwte}, {"wpe", &wpe, &dwpe}});
}

class ActivationTest : public ::testing::TestWithParam<Activation> {};

TEST_P(ActivationTest, BackwardMatchesFiniteDifferences) {
  std::vector<float> x = RandomVector(40, 1, 2.0f);
  for (float& v : x)
    if (std::fabs(v) < 0.05f) v = 0.3f;  // keep ReLU's kink away from ±h
  const std::vector<float> r = RandomVector(40, 2);
  std::vector<float> y(40), dx(40);
  auto forward = [&] {
    Be().ActivationForward(GetParam(), x.data(), 40, y.data());
    return y;
  };
  Be().ActivationBackward(GetParam(), x.data(), r.data(), 40, dx.data());
  ExpectGradientsMatch(forward, r, {{"x", &x, &dx}});
}

INSTANTIATE_TEST_SUITE_P(Kinds, ActivationTest, ::testing::Values(Activation::kGelu, Activation::kRelu));

TEST(ActivationTest, GeluValues) {
  const float x[3] = {0.0f, 1.0f, -2.0f};
  float y[3];
  Be().ActivationForward(Activation::kGelu, x, 3, y);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_NEAR(y[1], 0.841192f, 1e-5);  // torch.nn.functional.gelu(1, approximate="tanh")
  EXPECT_NEAR(y[2], -0.045402f, 1e-5);
}

// GELU's gradient against the exact one (double) on a dense grid, the tails included: from
// 1 − tanh² it was off by up to 1.5e-5 for |x| ≳ 2 (cancellation), found by the CUDA test's
// comparison with the GPU's formula; now within 2e-7 (bar 5e-7).
TEST(ActivationTest, GeluGradientIsAccurateWhereTanhSaturates) {
  std::vector<float> x, ones;
  for (float v = -12.0f; v < 12.0f; v += 1.0f / 1024) x.push_back(v);
  ones.assign(x.size(), 1.0f);
  std::vector<float> dx(x.size());
  Be().ActivationBackward(Activation::kGelu, x.data(), ones.data(), static_cast<int64_t>(x.size()), dx.data());
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i], k = 0.7978845608028654, th = std::tanh(k * (v + 0.044715 * v * v * v));
    const double exact = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * k * (1 + 3 * 0.044715 * v * v);
    worst = std::max(worst, std::fabs(dx[i] - exact));
  }
  EXPECT_LE(worst, 5e-7);
}

TEST(ChannelScaleTest, BackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 4, C = 3;
  std::vector<float> x = RandomVector(N * C, 1), s = RandomVector(C, 2);
  const std::vector<float> r = RandomVector(N * C, 3);
  std::vector<float> y(N * C);
  auto forward = [&] {
    Be().ChannelScaleForward(x.data(), s.data(), N, C, y.data());
    return y;
  };
  std::vector<float> dx(x.size()), ds(C, 0.0f);
  Be().ChannelScaleBackward(x.data(), s.data(), r.data(), N, C, dx.data(), ds.data(), nullptr);
  ExpectGradientsMatch(forward, r, {{"x", &x, &dx}, {"s", &s, &ds}});
}

TEST(SigmaReparamTest, BackwardMatchesFiniteDifferencesWithFixedVectors) {
  constexpr int64_t OUT = 4, IN = 3;
  std::vector<float> w = RandomVector(OUT * IN, 1), g = {1.7f};
  std::vector<float> u = RandomVector(OUT, 2), v = RandomVector(IN, 3);
  std::vector<float> w_eff(OUT * IN);
  float sigma = 0;
  Be().SigmaReparamForward(w.data(), g.data(), OUT, IN, /*update=*/true, u.data(), v.data(), &sigma, w_eff.data());
  const std::vector<float> r = RandomVector(OUT * IN, 4);
  auto forward = [&] {
    float s = 0;
    Be().SigmaReparamForward(w.data(), g.data(), OUT, IN, /*update=*/false, u.data(), v.data(), &s, w_eff.data());
    return w_eff;
  };
  Be().SigmaReparamForward(w.data(), g.data(), OUT, IN, false, u.data(), v.data(), &sigma, w_eff.data());
  std::vector<float> dw(w.size(), 0.0f), dg = {0.0f};
  Be().SigmaReparamBackward(w.data(), g.data(), &sigma, u.data(), v.data(), r.data(), OUT, IN, dw.data(), dg.data());
  ExpectGradientsMatch(forward, r, {{"w", &w, &dw}, {"g", &g, &dg}});
}

TEST(SigmaReparamTest, PowerIterationConvergesToTheSpectralNorm) {
  // diag(3, 1) padded: σ = 3.
  const float w[6] = {3, 0, 0, 0, 1, 0};
  std::vector<float> u = {0.6f, 0.8f}, v(3), w_eff(6);
  const float g = 2.0f;
  float sigma = 0;
  for (int i = 0; i < 30; ++i) Be().SigmaReparamForward(w, &g, 2, 3, true, u.data(), v.data(), &sigma, w_eff.data());
  EXPECT_NEAR(sigma, 3.0f, 1e-4);
  EXPECT_NEAR(w_eff[0], 2.0f, 1e-4);  // g·w/σ
}

TEST(RopeTest, InverseUndoesAndPreservesNorms) {
  constexpr int64_t B = 2, T = 5, H = 2, HD = 4;
  const std::vector<float> x0 = RandomVector(B * T * H * HD, 1);
  constexpr int64_t C = H * HD;
  std::vector<float> x = x0;
  Be().Rope(x.data(), C, x.data(), C, B, T, H, HD, 10000.0f, false);
  EXPECT_NEAR(Be().SumSquares(x.data(), x.size()), Be().SumSquares(x0.data(), x0.size()), 1e-3);
  for (int64_t i = 0; i < H * HD; ++i) EXPECT_EQ(x[i], x0[i]);  // position 0 is not rotated
  EXPECT_NE(x[H * HD], x0[H * HD]);
  const std::vector<float> rotated = x;
  Be().Rope(x.data(), C, x.data(), C, B, T, H, HD, 10000.0f, true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], x0[i], 1e-5);

  // Out of place between a block of wider rows (a QKV block, 3·C) and contiguous rows: the
  // same bits, nothing written outside the block.
  std::vector<float> wide(B * T * 3 * C, -7.0f), y(B * T * C);
  for (int64_t r = 0; r < B * T; ++r) std::copy_n(&x0[r * C], C, &wide[r * 3 * C + C]);
  Be().Rope(wide.data() + C, 3 * C, y.data(), C, B, T, H, HD, 10000.0f, false);
  EXPECT_EQ(y, rotated);
  std::vector<float> back(B * T * 3 * C, -7.0f);
  Be().Rope(y.data(), C, back.data() + C, 3 * C, B, T, H, HD, 10000.0f, true);
  for (int64_t r = 0; r < B * T; ++r) {
    for (int64_t j = 0; j < 3 * C; ++j) {
      if (j < C || j >= 2 * C)
        ASSERT_EQ(back[r * 3 * C + j], -7.0f) << "row " << r << " column " << j;
      else
        ASSERT_EQ(back[r * 3 * C + j], x[r * C + j - C]) << "row " << r << " column " << j;
    }
  }
}

TEST(ReductionTest, SumSquaresAndMeanRowNorm) {
  const float x[6] = {3, 4, 0, 0, 0, 1};  // rows of 2: norms 5, 0, 1
  EXPECT_DOUBLE_EQ(Be().SumSquares(x, 6), 26.0);
  EXPECT_DOUBLE_EQ(Be().MeanRowNorm(x, 3, 2), 2.0);
}

}  // namespace
}  // namespace stability::ops::cpu

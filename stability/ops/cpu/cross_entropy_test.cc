#include <cmath>

#include "gtest/gtest.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/grad_check.h"

namespace stability::ops::cpu {
namespace {

class CrossEntropyGradTest : public ::testing::TestWithParam<CrossEntropyOptions> {};

TEST_P(CrossEntropyGradTest, BackwardMatchesFiniteDifferences) {
  constexpr int64_t N = 6, V = 7;
  const CrossEntropyOptions opt = GetParam();
  std::vector<float> logits = RandomVector(N * V, 1, 3.0f);
  const int32_t targets[N] = {0, 6, 3, 3, 2, 5};
  std::vector<float> lse(N);
  CpuBackend& be = GetCpuBackend();
  auto forward = [&] {
    CrossEntropyStats s;
    be.CrossEntropyForward(logits.data(), targets, N, V, opt, lse.data(), &s);
    return std::vector<float>{static_cast<float>(s.loss)};
  };
  forward();
  std::vector<float> dlogits(N * V);
  be.CrossEntropyBackward(logits.data(), targets, lse.data(), N, V, opt, 1.0f, dlogits.data());
  ExpectGradientsMatch(forward, {1.0f}, {{"logits", &logits, &dlogits}}, 1e-2f);
}

// The model passes the logits as their own gradient's buffer: the same bits in place.
TEST_P(CrossEntropyGradTest, InPlaceIsTheSame) {
  constexpr int64_t N = 5, V = 37;  // V not a multiple of 8: the vector loop's tail too
  const CrossEntropyOptions opt = GetParam();
  std::vector<float> logits = RandomVector(N * V, 2, 3.0f);
  const int32_t targets[N] = {0, 36, 3, 33, 17};
  std::vector<float> lse(N);
  CpuBackend& be = GetCpuBackend();
  be.CrossEntropyForward(logits.data(), targets, N, V, opt, lse.data(), nullptr);
  std::vector<float> dlogits(N * V);
  be.CrossEntropyBackward(logits.data(), targets, lse.data(), N, V, opt, 0.5f, dlogits.data());
  be.CrossEntropyBackward(logits.data(), targets, lse.data(), N, V, opt, 0.5f, logits.data());
  EXPECT_EQ(logits, dlogits);
}

INSTANTIATE_TEST_SUITE_P(Options, CrossEntropyGradTest,
                         ::testing::Values(CrossEntropyOptions{}, CrossEntropyOptions{.soft_cap = 2.0f},
                                           CrossEntropyOptions{.z_loss = 0.1f},
                                           CrossEntropyOptions{.soft_cap = 3.0f, .z_loss = 0.05f}));

TEST(CrossEntropyTest, ValuesAndStats) {
  const float logits[4] = {0, 0, 1, 3};  // two rows of V = 2
  const int32_t targets[2] = {0, 1};
  float lse[2];
  CrossEntropyStats s;
  GetCpuBackend().CrossEntropyForward(logits, targets, 2, 2, {.z_loss = 1e-4f}, lse, &s);
  const double lse0 = std::log(2.0), lse1 = 3 + std::log1p(std::exp(-2.0));
  EXPECT_NEAR(lse[0], lse0, 1e-6);
  EXPECT_NEAR(s.ce_loss, (lse0 + lse1 - 3) / 2, 1e-6);
  EXPECT_NEAR(s.loss, s.ce_loss + 1e-4 * (lse0 * lse0 + lse1 * lse1) / 2, 1e-6);
  EXPECT_NEAR(s.mean_lse, (lse0 + lse1) / 2, 1e-6);
  EXPECT_FLOAT_EQ(s.max_logit, 3.0f);
}

}  // namespace
}  // namespace stability::ops::cpu

#include <cmath>

#include "gtest/gtest.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/grad_check.h"

namespace stability::ops::cpu {
namespace {

struct Case {
  const char* name;
  AttentionOptions opt;
};

class AttentionGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGradTest, BackwardMatchesFiniteDifferences) {
  constexpr int64_t B = 2, T = 4, H = 2, HD = 3, C = H * HD;
  AttentionOptions opt = GetParam().opt;
  opt.scale = 1.0f / std::sqrt(float(HD));
  std::vector<float> q = RandomVector(B * T * C, 1), k = RandomVector(B * T * C, 2), v = RandomVector(B * T * C, 3);
  const std::vector<float> r = RandomVector(B * T * C, 4);
  std::vector<float> probs(B * H * T * T), lse(B * H * T), out(B * T * C);
  CpuBackend& be = GetCpuBackend();
  auto forward = [&] {
    be.AttentionForward(q.data(), k.data(), v.data(), B, T, H, HD, opt, AttentionStrides::Contiguous(C), out.data(),
                        probs.data(), lse.data(), nullptr, nullptr, nullptr);
    return out;
  };
  forward();
  std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
  be.AttentionBackward(q.data(), k.data(), v.data(), nullptr, probs.data(), lse.data(), r.data(), B, T, H, HD, opt,
                       AttentionStrides::Contiguous(C), nullptr, dq.data(), dk.data(), dv.data());
  ExpectGradientsMatch(forward, r, {{"q", &q, &dq}, {"k", &k, &dk}, {"v", &v, &dv}});
}

INSTANTIATE_TEST_SUITE_P(SoftmaxOptions, AttentionGradTest,
                         ::testing::Values(Case{"plain", {}}, Case{"temperature", {.temperature = 0.5f}},
                                           Case{"soft_cap", {.soft_cap = 1.5f}},
                                           Case{"clip", {.clip = true}},
                                           Case{"all", {.temperature = 0.7f, .soft_cap = 2.0f, .clip = true}}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(AttentionTest, CausalAndStats) {
  // One head, hd = 1: logits are q_t·k_s; query 0 sees only key 0, so o_0 = v_0.
  const float q[3] = {1, 2, 3}, k[3] = {1, 0.5f, -1}, v[3] = {10, 20, 30};
  float out[3], probs[9], lse[3];
  AttentionStats stats;
  GetCpuBackend().AttentionForward(q, k, v, 1, 3, 1, 1, {}, AttentionStrides::Contiguous(1), out, probs, lse, &stats,
                                   nullptr, nullptr);
  EXPECT_FLOAT_EQ(out[0], 10.0f);
  EXPECT_EQ(probs[1], 0.0f);  // future keys get nothing
  EXPECT_EQ(probs[2], 0.0f);
  EXPECT_FLOAT_EQ(stats.max_logit, 3.0f);  // q_2·k_0
  // Entropy: row 0 is certain (0); row 1 is softmax(2, 1).
  const double p = 1 / (1 + std::exp(-1.0));
  const double h1 = -(p * std::log(p) + (1 - p) * std::log(1 - p));
  EXPECT_GT(stats.entropy_sum, h1);  // row 2 adds a positive entropy
  AttentionStats one;
  GetCpuBackend().AttentionForward(q, k, v, 1, 2, 1, 1, {}, AttentionStrides::Contiguous(1), out, probs, lse, &one,
                                   nullptr, nullptr);
  EXPECT_NEAR(one.entropy_sum, h1, 1e-6);
}

TEST(AttentionTest, SoftCapBoundsTheLogitsAndClipReachesZero) {
  // With a huge logit gap, a cap of 1 keeps both keys in play.
  const float q[2] = {0, 100}, k[2] = {1, -1}, v[2] = {0, 1};
  float out[2], probs[4], lse[2];
  const AttentionStrides ld = AttentionStrides::Contiguous(1);
  GetCpuBackend().AttentionForward(q, k, v, 1, 2, 1, 1, {.soft_cap = 1.0f}, ld, out, probs, lse, nullptr, nullptr,
                                   nullptr);
  EXPECT_NEAR(probs[2], std::exp(1.0) / (std::exp(1.0) + std::exp(-1.0)), 1e-5);
  // Clipped softmax: p = 0.0067 < 0.03/1.06 is clipped to exactly 0 weight on v.
  GetCpuBackend().AttentionForward(q, k, v, 1, 2, 1, 1, {.soft_cap = 2.5f, .clip = true}, ld, out, probs, lse, nullptr,
                                   nullptr, nullptr);
  EXPECT_LT(probs[3], 0.03f / 1.06f);
  EXPECT_FLOAT_EQ(out[1], 0.0f);
}

// q, k, v read in place from the column blocks of one wider buffer (as the model reads the
// QKV product) and dq, dk, dv written into one: the same values as contiguous buffers, and
// nothing written outside the blocks.
TEST(AttentionTest, StridedBlocksAreTheContiguousBuffers) {
  constexpr int64_t B = 2, T = 5, H = 2, HD = 4, C = H * HD, N = B * T, LD = 3 * C + 4;
  const AttentionOptions opt{.scale = 0.5f, .soft_cap = 2.0f};
  std::vector<float> q = RandomVector(N * C, 1), k = RandomVector(N * C, 2), v = RandomVector(N * C, 3);
  const std::vector<float> dout = RandomVector(N * C, 4);
  std::vector<float> probs(B * H * T * T), lse(B * H * T), out(N * C), dq(N * C), dk(N * C), dv(N * C);
  CpuBackend& be = GetCpuBackend();
  be.AttentionForward(q.data(), k.data(), v.data(), B, T, H, HD, opt, AttentionStrides::Contiguous(C), out.data(),
                      probs.data(), lse.data(), nullptr, nullptr, nullptr);
  be.AttentionBackward(q.data(), k.data(), v.data(), out.data(), probs.data(), lse.data(), dout.data(), B, T, H, HD,
                       opt, AttentionStrides::Contiguous(C), nullptr, dq.data(), dk.data(), dv.data());

  std::vector<float> qkv(N * LD, NAN), dqkv(N * LD, -7.0f);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < C; ++j) {
      qkv[i * LD + j] = q[i * C + j];
      qkv[i * LD + C + j] = k[i * C + j];
      qkv[i * LD + 2 * C + j] = v[i * C + j];
    }
  }
  const AttentionStrides ld{LD, LD, LD, LD, LD, LD};
  std::vector<float> probs2(probs.size()), lse2(lse.size()), out2(out.size());
  be.AttentionForward(qkv.data(), qkv.data() + C, qkv.data() + 2 * C, B, T, H, HD, opt, ld, out2.data(), probs2.data(),
                      lse2.data(), nullptr, nullptr, nullptr);
  be.AttentionBackward(qkv.data(), qkv.data() + C, qkv.data() + 2 * C, out2.data(), probs2.data(), lse2.data(),
                       dout.data(), B, T, H, HD, opt, ld, nullptr, dqkv.data(), dqkv.data() + C, dqkv.data() + 2 * C);
  EXPECT_EQ(out2, out);
  EXPECT_EQ(lse2, lse);
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < C; ++j) {
      ASSERT_EQ(dqkv[i * LD + j], dq[i * C + j]) << "dq row " << i;
      ASSERT_EQ(dqkv[i * LD + C + j], dk[i * C + j]) << "dk row " << i;
      ASSERT_EQ(dqkv[i * LD + 2 * C + j], dv[i * C + j]) << "dv row " << i;
    }
    for (int64_t j = 3 * C; j < LD; ++j) ASSERT_EQ(dqkv[i * LD + j], -7.0f) << "padding written, row " << i;
  }
}

}  // namespace
}  // namespace stability::ops::cpu

#include "stability/ops/cpu/gemm.h"

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace stability::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

class SgemmTest : public ::testing::TestWithParam<std::tuple<Trans, Trans, int, int, int>> {};

TEST_P(SgemmTest, MatchesReference) {
  const auto [ta, tb, m, n, k] = GetParam();
  // Padded leading dimensions, so strides are exercised, not only dense layouts.
  const int64_t lda = (ta == Trans::kNo ? k : m) + 3;
  const int64_t ldb = (tb == Trans::kNo ? n : k) + 1;
  const int64_t ldc = n + 2;
  const std::vector<float> a = Random((ta == Trans::kNo ? m : k) * lda, 1);
  const std::vector<float> b = Random((tb == Trans::kNo ? k : n) * ldb, 2);
  std::vector<float> c = Random(m * ldc, 3);
  std::vector<float> expected = c;

  ASSERT_TRUE(Sgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 0.25f, c.data(), ldc).ok());
  SgemmReference(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 0.25f, expected.data(), ldc);
  // fp32 accumulation of k products of N(0,1) values: error grows like sqrt(k)·eps.
  const float tol = 1e-5f * std::sqrt(static_cast<float>(k)) * 8;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      ASSERT_NEAR(c[i * ldc + j], expected[i * ldc + j], tol * (1 + std::fabs(expected[i * ldc + j])))
          << "at (" << i << "," << j << ")";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SgemmTest,
    ::testing::Combine(::testing::Values(Trans::kNo, Trans::kYes),
                       ::testing::Values(Trans::kNo, Trans::kYes), ::testing::Values(1, 17, 64),
                       ::testing::Values(1, 33, 96), ::testing::Values(1, 7, 130)));

TEST(SgemmTest, BetaZeroIgnoresGarbageInC) {
  const std::vector<float> a = Random(4 * 5, 4), b = Random(5 * 6, 5);
  std::vector<float> c(4 * 6, std::nanf("")), expected(4 * 6, 0.0f);
  ASSERT_TRUE(Sgemm(Trans::kNo, Trans::kNo, 4, 6, 5, 1.0f, a.data(), 5, b.data(), 6, 0.0f, c.data(), 6).ok());
  SgemmReference(Trans::kNo, Trans::kNo, 4, 6, 5, 1.0f, a.data(), 5, b.data(), 6, 0.0f, expected.data(), 6);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], expected[i], 1e-5f);
}

TEST(SgemmTest, RejectsBadShapes) {
  float x = 0;
  EXPECT_EQ(Sgemm(Trans::kNo, Trans::kNo, -1, 1, 1, 1, &x, 1, &x, 1, 0, &x, 1).code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status s = Sgemm(Trans::kNo, Trans::kNo, 2, 3, 4, 1, &x, 2, &x, 3, 0, &x, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("lda=2 needs >=4"), std::string::npos) << s;
}

TEST(GemmLibraryTest, DescribesOneDnn) {
  EXPECT_EQ(GemmLibraryDescription().rfind("oneDNN ", 0), 0u) << GemmLibraryDescription();
}

}  // namespace
}  // namespace stability::cpu

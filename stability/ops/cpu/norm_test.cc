#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/ops/cpu/grad_check.h"

namespace stability::ops::cpu {
namespace {

class NormGradTest : public ::testing::TestWithParam<std::tuple<NormKind, int64_t, bool>> {};

TEST_P(NormGradTest, BackwardMatchesFiniteDifferences) {
  const auto [kind, d, with_bias] = GetParam();  // d = 12: full width; d = 3: per head
  const int64_t rows = 24 / d * 2;
  std::vector<float> x = RandomVector(rows * d, 1, 2.0f), g = RandomVector(d, 2), b = RandomVector(d, 3);
  for (float& v : g) v += 1.0f;
  const std::vector<float> r = RandomVector(rows * d, 4);
  std::vector<float> y(rows * d), mean(rows), rstd(rows);
  CpuBackend& be = GetCpuBackend();
  auto forward = [&] {
    be.NormForward(kind, x.data(), RowLayout::Contiguous(d), g.data(), with_bias ? b.data() : nullptr, rows, d, 1e-5f,
                   y.data(), mean.data(), rstd.data(), nullptr);
    return y;
  };
  forward();
  std::vector<float> dx(x.size()), dg(d, 0.0f), db(d, 0.0f);
  be.NormBackward(kind, x.data(), RowLayout::Contiguous(d), g.data(), mean.data(), rstd.data(), r.data(), rows, d,
                  dx.data(), dg.data(), with_bias ? db.data() : nullptr, nullptr);
  std::vector<GradInput> inputs = {{"x", &x, &dx}, {"g", &g, &dg}};
  if (with_bias) inputs.push_back({"b", &b, &db});
  ExpectGradientsMatch(forward, r, inputs);
}

INSTANTIATE_TEST_SUITE_P(KindsAndWidths, NormGradTest,
                         ::testing::Combine(::testing::Values(NormKind::kLayerNorm, NormKind::kRMSNorm),
                                            ::testing::Values(int64_t{12}, int64_t{3}), ::testing::Bool()));

// Rows read in place from a column block of a wider buffer (as the q/k/v norms read the QKV
// product: a token's `group` rows side by side, tokens `stride` apart, the block at column
// col0): the contiguous rows' results bit for bit, dx written into the block and nothing
// outside it.
TEST(NormTest, RowsInAWiderBufferAreTheContiguousRows) {
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    for (int64_t group : {1, 3}) {
      const int64_t d = 4, tokens = 5, rows = tokens * group, col0 = group * d, stride = 3 * group * d + 4;
      const RowLayout layout{group, stride};
      const std::vector<float> x = RandomVector(rows * d, 1, 2.0f), g = RandomVector(d, 2), b = RandomVector(d, 3);
      const std::vector<float> dy = RandomVector(rows * d, 4);
      std::vector<float> wide(tokens * stride, NAN), dwide(tokens * stride, -7.0f);
      for (int64_t r = 0; r < rows; ++r) std::copy_n(&x[r * d], d, &wide[col0 + layout.Offset(r, d)]);
      CpuBackend& be = GetCpuBackend();
      std::vector<float> y(rows * d), mean(rows), rstd(rows), dx(rows * d), dg(d, 0.0f), db(d, 0.0f);
      be.NormForward(kind, x.data(), RowLayout::Contiguous(d), g.data(), b.data(), rows, d, 1e-5f, y.data(),
                     mean.data(), rstd.data(), nullptr);
      be.NormBackward(kind, x.data(), RowLayout::Contiguous(d), g.data(), mean.data(), rstd.data(), dy.data(), rows, d,
                      dx.data(), dg.data(), db.data(), nullptr);
      std::vector<float> y2(rows * d), mean2(rows), rstd2(rows), dg2(d, 0.0f), db2(d, 0.0f);
      be.NormForward(kind, wide.data() + col0, layout, g.data(), b.data(), rows, d, 1e-5f, y2.data(), mean2.data(),
                     rstd2.data(), nullptr);
      be.NormBackward(kind, wide.data() + col0, layout, g.data(), mean2.data(), rstd2.data(), dy.data(), rows, d,
                      dwide.data() + col0, dg2.data(), db2.data(), nullptr);
      EXPECT_EQ(y2, y);
      EXPECT_EQ(rstd2, rstd);
      EXPECT_EQ(dg2, dg);
      EXPECT_EQ(db2, db);
      std::vector<float> outside = dwide;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t at = col0 + layout.Offset(r, d);
        EXPECT_TRUE(std::equal(&dx[r * d], &dx[(r + 1) * d], &dwide[at])) << "dx row " << r << ", group " << group;
        std::fill_n(&outside[at], d, -7.0f);
      }
      EXPECT_EQ(outside, std::vector<float>(tokens * stride, -7.0f)) << "written outside the block, group " << group;
    }
  }
}

// The fused residual add + norm is the two ops it replaces, bit for bit, both ways.
TEST(NormTest, AddNormIsTheAddThenTheNorm) {
  const int64_t rows = 7, d = 12;
  const std::vector<float> x = RandomVector(rows * d, 5, 2.0f), a = RandomVector(rows * d, 6), b = RandomVector(d, 7);
  std::vector<float> g = RandomVector(d, 8);
  for (float& v : g) v += 1.0f;
  const std::vector<float> dy = RandomVector(rows * d, 9), dres = RandomVector(rows * d, 10);
  CpuBackend& be = GetCpuBackend();
  for (NormKind kind : {NormKind::kLayerNorm, NormKind::kRMSNorm}) {
    std::vector<float> sum(rows * d), y(rows * d), mean(rows), rstd(rows);
    be.Add(x.data(), a.data(), rows * d, sum.data());
    be.NormForward(kind, sum.data(), RowLayout::Contiguous(d), g.data(), b.data(), rows, d, 1e-5f, y.data(),
                   mean.data(), rstd.data(), nullptr);
    std::vector<float> fsum(rows * d), fy(rows * d), fmean(rows), frstd(rows);
    be.AddNormForward(kind, x.data(), a.data(), nullptr, g.data(), b.data(), rows, d, 1e-5f, fsum.data(), fy.data(),
                      fmean.data(), frstd.data(), nullptr);
    EXPECT_EQ(fsum, sum);
    EXPECT_EQ(fy, y);
    EXPECT_EQ(frstd, rstd);
    if (kind == NormKind::kLayerNorm) {
      EXPECT_EQ(fmean, mean);
    }
    // With a layer scale on the branch: ChannelScaleForward, then the same.
    std::vector<float> scaled(rows * d), ssum(rows * d), sy(rows * d), smean(rows), srstd(rows);
    be.ChannelScaleForward(a.data(), b.data(), rows, d, scaled.data());
    be.Add(x.data(), scaled.data(), rows * d, ssum.data());
    be.NormForward(kind, ssum.data(), RowLayout::Contiguous(d), g.data(), b.data(), rows, d, 1e-5f, sy.data(),
                   smean.data(), srstd.data(), nullptr);
    be.AddNormForward(kind, x.data(), a.data(), b.data(), g.data(), b.data(), rows, d, 1e-5f, fsum.data(), fy.data(),
                      fmean.data(), frstd.data(), nullptr);
    EXPECT_EQ(fsum, ssum);
    EXPECT_EQ(fy, sy);
    EXPECT_NE(fsum, sum);

    std::vector<float> dx(rows * d), dg(d, 0.5f), db(d, 0.25f), expect = dres;
    be.NormBackward(kind, sum.data(), RowLayout::Contiguous(d), g.data(), mean.data(), rstd.data(), dy.data(), rows, d,
                    dx.data(), dg.data(), db.data(), nullptr);
    be.AddInPlace(expect.data(), dx.data(), rows * d);
    std::vector<float> fdres = dres, fdg(d, 0.5f), fdb(d, 0.25f);
    be.AddNormBackward(kind, sum.data(), g.data(), mean.data(), rstd.data(), dy.data(), rows, d, fdres.data(),
                       fdg.data(), fdb.data(), nullptr, nullptr);
    EXPECT_EQ(fdres, expect);
    EXPECT_EQ(fdg, dg);
    EXPECT_EQ(fdb, db);
    EXPECT_NE(fdres, dres);  // it did add
  }
}

TEST(NormTest, NormalisesRows) {
  const float x[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1};
  float y[4], mean[1], rstd[1];
  GetCpuBackend().NormForward(NormKind::kLayerNorm, x, RowLayout::Contiguous(4), g, nullptr, 1, 4, 0.0f, y, mean, rstd,
                              nullptr);
  EXPECT_FLOAT_EQ(mean[0], 2.5f);
  EXPECT_NEAR(y[0], -1.5 / std::sqrt(1.25), 1e-6);
  GetCpuBackend().NormForward(NormKind::kRMSNorm, x, RowLayout::Contiguous(4), g, nullptr, 1, 4, 0.0f, y, nullptr, rstd,
                              nullptr);
  EXPECT_NEAR(y[3], 4 / std::sqrt(7.5), 1e-6);  // mean(x²) = 30/4
}

}  // namespace
}  // namespace stability::ops::cpu

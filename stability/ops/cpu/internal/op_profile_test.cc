#include "stability/ops/cpu/internal/op_profile.h"

#include <omp.h>

#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace stability::ops::cpu::internal {
namespace {

// A clock the test moves by hand: the profile's arithmetic, exactly.
double fake_ms = 0;
double FakeNow() { return fake_ms; }

// An op's time excludes the scopes inside it (each is its own row); scopes in a parallel
// region count as their op's; the time outside every op is its own row; off, nothing is kept.
TEST(OpProfileTest, ExclusiveTimesByName) {
  OpProfile& p = OpProfile::Get();
  p.SetClockForTesting(FakeNow);
  { OpScope off("Off"); }
  p.Start();
  for (int i = 0; i < 2; ++i) {
    OpScope outer("LinearForward");
    fake_ms += 5;
    {
      OpScope product(std::string("sgemm 8×8×8"));
      fake_ms += 150;
    }
#pragma omp parallel num_threads(2)
    {
      OpScope inside("InParallel");
#pragma omp master
      fake_ms += 7;  // the op's time: the parallel region's scopes are not timed
    }
  }
  fake_ms += 20;
  const std::vector<OpProfile::Row> rows = p.Stop();
  p.SetClockForTesting(nullptr);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].name, "LinearForward");
  EXPECT_EQ(rows[0].calls, 2);
  EXPECT_DOUBLE_EQ(rows[0].ms, 2 * (5 + 7));
  EXPECT_EQ(rows[1].name, "sgemm 8×8×8");
  EXPECT_EQ(rows[1].calls, 2);
  EXPECT_DOUBLE_EQ(rows[1].ms, 2 * 150);
  EXPECT_EQ(rows[2].name, OpProfile::kOutside);
  EXPECT_DOUBLE_EQ(rows[2].ms, 20);
  EXPECT_FALSE(p.on());
  { OpScope after("After"); }
  p.Start();
  EXPECT_EQ(p.Stop().size(), 1u);  // only the outside row: nothing was kept while off
}

// With the real clock, a scope's time is at least what it slept.
TEST(OpProfileTest, TheSteadyClockCounts) {
  OpProfile& p = OpProfile::Get();
  p.Start();
  {
    OpScope op("Sleep");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::vector<OpProfile::Row> rows = p.Stop();
  ASSERT_EQ(rows[0].name, "Sleep");
  EXPECT_GE(rows[0].ms, 20);
}

}  // namespace
}  // namespace stability::ops::cpu::internal

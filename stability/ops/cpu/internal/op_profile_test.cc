#include "stability/ops/cpu/internal/op_profile.h"

#include <omp.h>

#include <chrono>
#include <thread>

#include "gtest/gtest.h"

namespace stability::ops::cpu::internal {
namespace {

void Sleep(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// An op's time excludes the scopes inside it (each is its own row); scopes in a parallel
// region count as their op's; the time outside every op is its own row; off, nothing is kept.
TEST(OpProfileTest, ExclusiveTimesByName) {
  OpProfile& p = OpProfile::Get();
  { OpScope off("Off"); }
  p.Start();
  for (int i = 0; i < 2; ++i) {
    OpScope outer("LinearForward");
    Sleep(5);
    {
      OpScope product(std::string("sgemm 8×8×8"));
      Sleep(150);
    }
#pragma omp parallel num_threads(2)
    { OpScope inside("InParallel"); }
  }
  Sleep(20);
  const std::vector<OpProfile::Row> rows = p.Stop();
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].name, "LinearForward");
  EXPECT_EQ(rows[0].calls, 2);
  EXPECT_EQ(rows[1].name, "sgemm 8×8×8");
  EXPECT_EQ(rows[1].calls, 2);
  EXPECT_GE(rows[1].ms, 300);
  EXPECT_GE(rows[0].ms, 10);
  EXPECT_LT(rows[0].ms, 150) << "the product's 300 ms were counted in its op too";
  EXPECT_EQ(rows[2].name, OpProfile::kOutside);
  EXPECT_GE(rows[2].ms, 20);
  EXPECT_FALSE(p.on());
  { OpScope after("After"); }
  p.Start();
  EXPECT_EQ(p.Stop().size(), 1u);  // only the outside row: nothing was kept while off
}

}  // namespace
}  // namespace stability::ops::cpu::internal

#include "stability/base/guarded_block.h"

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "gtest/gtest.h"

namespace stability {
namespace {

TEST(GuardedBlockTest, EndsAtTheGuardPageAlignedAndNanFilled) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{100}, size_t{4096}, size_t{10000}}) {
    GuardedBlock b = MapGuarded(bytes, 64, /*host_access=*/true);
    ASSERT_NE(b.data, nullptr);
    const auto data = reinterpret_cast<uintptr_t>(b.data), base = reinterpret_cast<uintptr_t>(b.base);
    EXPECT_EQ(data % 64, 0u);
    const size_t usable = ((bytes > 0 ? bytes : 1) + 63) / 64 * 64;
    EXPECT_EQ(data + usable, base + b.open_bytes) << bytes;  // the guard page right after
    float f;
    std::memcpy(&f, b.data, sizeof(f));
    EXPECT_TRUE(std::isnan(f));
    UnmapGuarded(b);
  }
}

TEST(GuardedBlockTest, APastTheEndWriteFaults) {
  GuardedBlock b = MapGuarded(256, 256, /*host_access=*/true);
  ASSERT_NE(b.data, nullptr);
  static_cast<unsigned char*>(b.data)[255] = 1;  // the last byte is open
  EXPECT_DEATH(static_cast<volatile unsigned char*>(b.data)[256] = 1, "");
  UnmapGuarded(b);
}

TEST(GuardedBlockTest, WithoutHostAccessItFaultsUntilOpened) {
  GuardedBlock b = MapGuarded(64, 64, /*host_access=*/false);
  ASSERT_NE(b.data, nullptr);
  EXPECT_DEATH(static_cast<volatile unsigned char*>(b.data)[0] = 1, "");
  ASSERT_EQ(mprotect(b.base, b.open_bytes, PROT_READ | PROT_WRITE), 0);
  EXPECT_EQ(static_cast<unsigned char*>(b.data)[0], 0xff);  // filled before it was closed
  UnmapGuarded(b);
}

}  // namespace
}  // namespace stability

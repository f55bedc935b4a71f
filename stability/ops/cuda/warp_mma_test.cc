// The register layouts of internal/warp_mma.cuh, which the tensor-core attention is built on,
// as the PTX ISA documents them (g = lane / 4, q = lane % 4): an mma.sync of fragments built
// by the documented A and B layouts gives A·B in the documented D layout; ldmatrix.x4 of A's
// four quarters gives register j = quarter j's [g][2q..2q+1] — A's documented fragment when the
// quarters are taken in the attention's order — and .trans quarter j's [2q..2q+1][g]. Small
// integer operands: every product and sum exact, in any order. On a GPU (tools/gpu_check.sh)
// this checks the hardware; on the emulator, the emulation.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "stability/ops/cuda/warp_mma_probe.h"

namespace stability::ops::cuda {
namespace {

uint16_t Bf16Bits(float f) {  // exact for the small integers used here
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

TEST(WarpMmaTest, FragmentsHaveThePtxLayouts) {
  std::vector<float> a(256), b(128);  // A [16 × 16]; B [16 × 8] as Bᵀ [8 × 16]
  for (int i = 0; i < 256; ++i) a[i] = static_cast<float>((i * 7) % 9 - 4);
  for (int i = 0; i < 128; ++i) b[i] = static_cast<float>((i * 5) % 7 - 3);
  std::vector<uint16_t> a16(256), b16(128);
  for (int i = 0; i < 256; ++i) a16[i] = Bf16Bits(a[i]);
  for (int i = 0; i < 128; ++i) b16[i] = Bf16Bits(b[i]);
  WarpMmaProbe probe;
  std::string why;
  if (!RunWarpMmaProbe(a16, b16, &probe, &why)) GTEST_SKIP() << why;
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      float want = 0;
      for (int k = 0; k < 16; ++k) want += a[r * 16 + k] * b[n * 16 + k];
      EXPECT_EQ(probe.d[r * 8 + n], want) << "D[" << r << "][" << n << "]";
    }
  }
  const auto pair = [&](int r0, int c0, int r1, int c1) {
    return uint32_t{a16[r0 * 16 + c0]} | uint32_t{a16[r1 * 16 + c1]} << 16;
  };
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, q = lane % 4;
    for (int j = 0; j < 4; ++j) {
      const int r0 = 8 * (j % 2), c0 = 8 * (j / 2);  // quarter j
      EXPECT_EQ(probe.ldm[lane * 4 + j], pair(r0 + g, c0 + 2 * q, r0 + g, c0 + 2 * q + 1)) << lane << " " << j;
      EXPECT_EQ(probe.ldm_t[lane * 4 + j], pair(r0 + 2 * q, c0 + g, r0 + 2 * q + 1, c0 + g)) << lane << " " << j;
      EXPECT_EQ(probe.ldm[lane * 4 + j], probe.a[lane * 4 + j])
          << "ldmatrix gives the A fragment: " << lane << " " << j;
    }
  }
}

// cp.async (internal/cp_async.cuh): a wait for all but the newest group lands the older one,
// for every thread after a barrier; a wait for all lands the rest, the zero-filled copy as
// zeros. On the emulator a copy lands only at its wait (its bytes poisoned until then), which is
// what makes the attention tests fail when a kernel reads a tile too early.
TEST(CpAsyncTest, GroupsLandAtTheirWaits) {
  std::vector<uint32_t> src(256);
  for (int i = 0; i < 256; ++i) src[i] = 0x01000000u * (i % 7 + 1) + static_cast<uint32_t>(i);
  CpAsyncProbe probe;
  std::string why;
  if (!RunCpAsyncProbe(src, &probe, &why)) GTEST_SKIP() << why;
  for (int i = 0; i < 64; ++i) {
    const int next = (i + 1) % 64;
    for (int j = 0; j < 4; ++j) {
      EXPECT_EQ(probe.group0[4 * i + j], src[4 * next + j]) << "thread " << i << ", word " << j;
      EXPECT_EQ(probe.zeros[4 * i + j], 0u) << "thread " << i << ", word " << j;
      if (probe.emulated) EXPECT_EQ(probe.early[4 * i + j], 0xffffffffu) << "read before its wait";
    }
    EXPECT_EQ(probe.word[i], src[next]) << "thread " << i;
  }
}

}  // namespace
}  // namespace stability::ops::cuda

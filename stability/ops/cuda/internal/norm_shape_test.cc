#include "stability/ops/cuda/internal/norm_shape.h"

#include <gtest/gtest.h>

namespace stability::ops::cuda::internal {
namespace {

TEST(NormShapeTest, RowsUpTo128WideTakeEightLanesFourToAWarp) {
  EXPECT_EQ(LanesPerRow(64), 8);  // a per-head norm
  EXPECT_EQ(LanePart(64), 8);
  EXPECT_EQ(LanePart(16), 2);
  EXPECT_EQ(LanePart(100), 16);  // ⌈100 / 8⌉ = 13, rounded up to an instantiated part
  EXPECT_EQ(LanePart(128), 16);
  EXPECT_EQ(LanesPerRow(129), 32);
  EXPECT_EQ(LanePart(129), 8);
  EXPECT_EQ(LanePart(768), 24);   // GPT-2
  EXPECT_EQ(LanePart(1024), 32);  // the 830M shape
  EXPECT_EQ(LanePart(1025), 0);   // streamed
  EXPECT_EQ(ForwardWarpsFor(37, 64), 10);
  EXPECT_EQ(ForwardWarpsFor(36, 64), 9);
  EXPECT_EQ(ForwardWarpsFor(37, 768), 37);
}

TEST(NormShapeTest, BackwardWarpsKeepTheirGroupsSlotsInSharedMemory) {
  EXPECT_EQ(NormBackwardWarps(64), 8);    // 32 slots of 2·64 floats: 32 KB
  EXPECT_EQ(NormBackwardWarps(768), 4);   // 24 columns a lane: 4 warps
  EXPECT_EQ(NormBackwardWarps(7000), 1);  // past 48 KB already
}

TEST(NormShapeTest, ChunksComeInWholeWavesOfTheResidentBlocks) {
  EXPECT_EQ(NormChunks(16384, 0), 512);      // no occupancy known: ~32 rows a block
  EXPECT_EQ(NormChunks(16384, 396), 396);    // GPT-2 on an H200, 3 blocks an SM: one wave
  EXPECT_EQ(NormChunks(16384, 264), 264);    // 2 blocks an SM
  EXPECT_EQ(NormChunks(16384, 1056), 512);   // fewer chunks than resident blocks: as they are
  EXPECT_EQ(NormChunks(196608, 264), 1848);  // a per-head norm: 7 waves, not 7.8
  EXPECT_EQ(NormChunks(100, 396), 3);
  EXPECT_EQ(NormChunks(10, 396), 1);
  for (int resident : {1, 7, 132, 264, 396, 1000}) {
    for (int64_t rows : {31, 32, 4096, 16384, 50000, 196608, 1000000}) {
      const int chunks = NormChunks(rows, resident), plain = NormChunks(rows, 0);
      EXPECT_GE(chunks, 1);
      EXPECT_LE(chunks, plain);  // never smaller blocks than ~32 rows, nor more than 2,048
      if (plain > resident) {
        EXPECT_EQ(chunks % resident, 0) << rows << " rows, " << resident << " resident";
        EXPECT_GT(chunks, plain - resident);  // rounded down by less than a wave
      } else {
        EXPECT_EQ(chunks, plain);
      }
    }
  }
}

}  // namespace
}  // namespace stability::ops::cuda::internal

#include "stability/train/sweep.h"

#include "gtest/gtest.h"

namespace stability::train {
namespace {

// Cells that may take any GPU are pinned to one of the machine's by job slot (through their
// CUDA_VISIBLE_DEVICES, of the sweep's own list when it has one); the others see what the
// sweep sees.
TEST(SweepTest, CellsAreSpreadOverTheGpusByJobSlot) {
  EXPECT_EQ(CellVisibleGpu("auto", 0, 4, nullptr), "0");
  EXPECT_EQ(CellVisibleGpu("cuda", 3, 4, nullptr), "3");
  EXPECT_EQ(CellVisibleGpu("auto", 5, 4, ""), "1");  // more jobs than GPUs: shared
  EXPECT_EQ(CellVisibleGpu("auto", 1, 2, "5,7"), "7");
  EXPECT_EQ(CellVisibleGpu("auto", 2, 2, "5,7"), "5");
  EXPECT_EQ(CellVisibleGpu("cuda:2", 0, 4, nullptr), "");  // an explicit GPU: all visible
  EXPECT_EQ(CellVisibleGpu("cpu", 1, 4, nullptr), "");
  EXPECT_EQ(CellVisibleGpu("auto", 1, 0, nullptr), "");  // no GPU: unchanged
}

}  // namespace
}  // namespace stability::train

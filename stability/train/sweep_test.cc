#include "stability/train/sweep.h"

#include "gtest/gtest.h"

namespace stability::train {
namespace {

// Cells that may take any GPU are spread over the machine's by job slot; the others keep
// their device.
TEST(SweepTest, CellsAreSpreadOverTheGpusByJobSlot) {
  EXPECT_EQ(CellDevice("auto", 0, 4), "cuda:0");
  EXPECT_EQ(CellDevice("cuda", 3, 4), "cuda:3");
  EXPECT_EQ(CellDevice("auto", 5, 4), "cuda:1");  // more jobs than GPUs: shared
  EXPECT_EQ(CellDevice("cuda:2", 0, 4), "cuda:2");
  EXPECT_EQ(CellDevice("cpu", 1, 4), "cpu");
  EXPECT_EQ(CellDevice("auto", 1, 0), "auto");  // no GPU: the cell decides (the CPU)
  EXPECT_EQ(CellDevice("cuda", 1, 0), "cuda");  // and fails with the trainer's error
}

}  // namespace
}  // namespace stability::train

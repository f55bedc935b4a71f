#include "stability/train/kernel_profile.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace stability::train {
namespace {

using ::testing::HasSubstr;

TEST(KernelProfileTest, ProductFlopsFromTheRowName) {
  EXPECT_DOUBLE_EQ(*ProductFlops("cublasLt bf16 + bias 8192×2304×768"), 2.0 * 8192 * 2304 * 768);
  EXPECT_DOUBLE_EQ(*ProductFlops("cublasGemmEx bf16 (bf16 out) 1024×1024×64 ×12"), 2.0 * 1024 * 1024 * 64 * 12);
  EXPECT_DOUBLE_EQ(*ProductFlops("cublasSgemm 1×768×2304"), 2.0 * 768 * 2304);
  EXPECT_DOUBLE_EQ(*ProductFlops("sgemm 512×1536×512"), 2.0 * 512 * 1536 * 512);  // the CPU's
  EXPECT_FALSE(ProductFlops("NormForwardKernel"));
  EXPECT_FALSE(ProductFlops("cudaMemcpy (lse)"));
  EXPECT_FALSE(ProductFlops("cublasGemmEx bf16"));  // no shape: not counted
}

TEST(KernelProfileTest, Parts) {
  EXPECT_EQ(KernelPart("cublasLt bf16 + bias + GELU 8192×3072×768"), "matrix products");
  EXPECT_EQ(KernelPart("tensor-core attention forward"), "attention");
  EXPECT_EQ(KernelPart("fused attention backward"), "attention");
  EXPECT_EQ(KernelPart("SoftmaxRowsKernel"), "attention");
  EXPECT_EQ(KernelPart("AttentionStatsKernel"), "attention");
  EXPECT_EQ(KernelPart("CrossEntropyBackwardKernel (bf16)"), "cross-entropy");
  EXPECT_EQ(KernelPart("cudaMemcpy (to the GPU)"), "copies");
  EXPECT_EQ(KernelPart("NormForwardKernel (add)"), "other kernels");
  EXPECT_EQ(KernelPart("sgemm 512×1536×512"), "matrix products");
  EXPECT_EQ(KernelPart("AttentionBackward"), "attention");
  EXPECT_EQ(KernelPart("CrossEntropyForward"), "cross-entropy");
  EXPECT_EQ(KernelPart("Copy"), "copies");
  EXPECT_EQ(KernelPart("(outside the ops: the model's host work)"), "outside the ops");
}

// The parts' table sums the rows by part, largest first, with the products' FLOP/s; the
// kernels' table lists every row, largest first.
TEST(KernelProfileTest, MarkdownSumsThePartsAndRatesTheProducts) {
  const std::vector<ops::Backend::KernelTime> rows = {
      {"NormForwardKernel (add)", 24, 0.5},
      {"cublasLt bf16 + bias 8192×2304×768", 12, 1.2},  // 12 × 29.0 GFLOP in 1.2 ms: 290 TFLOP/s
      {"tensor-core attention forward", 12, 2.0},
      {"cublasGemmEx bf16 8192×768×768", 12, 0.3},  // 12 × 9.66 GFLOP in 0.3 ms: 387 TFLOP/s
  };
  const std::string md = KernelProfileMarkdown(rows, 3);
  EXPECT_THAT(md, HasSubstr("# Kernel profile of step 3"));
  EXPECT_THAT(md, HasSubstr("4.000 ms in 60 calls"));
  EXPECT_THAT(md, HasSubstr("| attention | 12 | 2.000 | 50.0% |  |"));
  EXPECT_THAT(md, HasSubstr("| matrix products | 24 | 1.500 | 37.5% | 309 |"));  // 464 GFLOP in 1.5 ms
  EXPECT_THAT(md, HasSubstr("| other kernels | 24 | 0.500 | 12.5% |  |"));
  EXPECT_THAT(md, HasSubstr("| cublasLt bf16 + bias 8192×2304×768 | 12 | 1.200 | 30.0% | 100.0 | 290 |"));
  EXPECT_THAT(md, HasSubstr("| cublasGemmEx bf16 8192×768×768 | 12 | 0.300 | 7.5% | 25.0 | 387 |"));
  EXPECT_LT(md.find("| attention |"), md.find("| matrix products |"));
  EXPECT_LT(md.find("| tensor-core attention forward |"), md.find("| cublasLt bf16 + bias"));
}

}  // namespace
}  // namespace stability::train

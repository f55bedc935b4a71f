// What step_traffic's projection stands on: the counted step's matrix products are exactly
// the model's 6 · tokens · (weights in products) flops, the attention's WMMA flops are its
// tiles' products (forward and backward: the tensor-core kernels run), every kernel moves bytes, the batch
// extrapolation gives what a run at that batch counts, and the roofline picks the larger cost.
#include "tests/cuda/step_traffic.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "stability/model/config.h"

namespace stability::cuda_traffic {
namespace {

model::ModelConfig Tiny(const std::string& variant = "baseline") { return *model::MakeConfig("tiny", variant); }

bool IsProduct(const LaunchCost& c) { return c.library && c.name.rfind("cublas", 0) == 0; }

TEST(StepTrafficTest, TheProductsAreTheModelsFlopsAndTheAttentionItsTiles) {
  const model::ModelConfig c = Tiny();
  const int64_t batch = 2, seq = 64;
  absl::StatusOr<std::vector<LaunchCost>> step = MeasuredStepTraffic(c, batch, seq);
  ASSERT_TRUE(step.ok()) << step.status();
  double products = 0, attention = 0;
  for (const LaunchCost& l : *step) {
    if (IsProduct(l)) products += l.flops;
    if (!l.library) {
      attention += l.flops;  // only the tensor-core attention's kernels use WMMA
      EXPECT_GT(l.bytes_read + l.bytes_written, 0) << l.name;
    }
  }
  const double tokens = batch * seq, C = c.n_embd, L = c.n_layer;
  // QKV, Proj, FC1, FC2 (12·C² a layer) and the tied LM head, forward (2) and backward (4).
  EXPECT_EQ(products, 6 * tokens * (12 * L * C * C + c.vocab_size * C));
  // The tensor-core attention's products of a 64-row tile (tensor_core_attention.cu), whole at
  // seq 64: forward S = QKᵀ, O = PV; the queries' backward S, dP' = dO·Vᵀ, dQ = dZ·K; the
  // keys' Sᵀ, dP'ᵀ, dK = dZᵀ·Q, dV = Pᵀ·dO. Nine products of T×T×D a head and layer.
  const double product = 2.0 * batch * c.n_head * seq * seq * (C / c.n_head) * L;
  EXPECT_EQ(attention, 9 * product);
}

// FC1 in bf16 is one cuBLASLt product a layer whose GELU epilogue writes the activation
// (FC2's operand) and the pre-activation the backward reads, both in bf16: it reads x, w and
// the bf16 bias, and writes 2 + 2 bytes a hidden value. FC2's input gradient is one product
// a layer whose DGELU epilogue reads that pre-activation and writes FC1's pre-activation
// gradient in bf16: dz and w2 read, 2 + 2 bytes a hidden value.
TEST(StepTrafficTest, TheMlpsHiddenValuesAreBf16InTheProductsEpilogues) {
  const model::ModelConfig c = Tiny();
  const int64_t batch = 2, seq = 64, tokens = batch * seq, C = c.n_embd, F = c.mlp_ratio * c.n_embd;
  absl::StatusOr<std::vector<LaunchCost>> step = MeasuredStepTraffic(c, batch, seq);
  ASSERT_TRUE(step.ok()) << step.status();
  int fc1 = 0, fc2 = 0;
  for (const LaunchCost& l : *step) {
    if (l.name.rfind("cublasLt + bias + GELU", 0) == 0) {
      ++fc1;
      EXPECT_EQ(l.bytes_read, 2 * (F * C + tokens * C + F)) << l.name;
      EXPECT_EQ(l.bytes_written, 2 * 2 * tokens * F) << l.name;
    } else if (l.name.rfind("cublasLt + DGELU", 0) == 0) {
      ++fc2;
      EXPECT_EQ(l.bytes_read, 2 * (C * F + tokens * C + tokens * F)) << l.name;
      EXPECT_EQ(l.bytes_written, 2 * tokens * F) << l.name;
    }
  }
  EXPECT_EQ(fc1, c.n_layer);
  EXPECT_EQ(fc2, c.n_layer);
}

// The step's weights are multiplied in the bf16 copies AdamW wrote in its pass: no weight is
// rounded on its own — the only rounding passes are FC1's and QKV's biases, F and 3·C values a
// layer, for their bf16 epilogues. And QKV's and FC1's input gradients go to N1's and N2's
// backward in bf16, Proj's to the attention's: their dx products write 2 bytes a value, once a
// layer each.
TEST(StepTrafficTest, NoWeightIsRoundedAndTheNormsTakeTheProductsGradientsInBf16) {
  const model::ModelConfig c = Tiny();
  const int64_t batch = 2, seq = 64, tokens = batch * seq, C = c.n_embd, F = c.mlp_ratio * c.n_embd;
  absl::StatusOr<std::vector<LaunchCost>> step = MeasuredStepTraffic(c, batch, seq);
  ASSERT_TRUE(step.ok()) << step.status();
  const std::string dx_of_qkv = "cublasGemmEx bf16→bf16 " + std::to_string(C) + "×" + std::to_string(tokens) + "×" +
                                std::to_string(3 * C),
                    dx_of_fc1 = "cublasGemmEx bf16→bf16 " + std::to_string(C) + "×" + std::to_string(tokens) + "×" +
                                std::to_string(F),
                    dx_of_proj = "cublasGemmEx bf16→bf16 " + std::to_string(C) + "×" + std::to_string(tokens) + "×" +
                                 std::to_string(C);
  int fc1_bias = 0, qkv_bias = 0, qkv = 0, fc1 = 0, proj = 0;
  for (const LaunchCost& l : *step) {
    if (l.name == "ToBf16Kernel") {
      ++(l.bytes_read == 4 * F ? fc1_bias : qkv_bias);
      if (l.bytes_read != 4 * F) EXPECT_EQ(l.bytes_read, 4 * 3 * C) << "FC1's or QKV's bias, nothing larger";
    } else if (l.name == dx_of_qkv || l.name == dx_of_fc1 || l.name == dx_of_proj) {
      ++(l.name == dx_of_qkv ? qkv : l.name == dx_of_fc1 ? fc1 : proj);
      EXPECT_EQ(l.bytes_written, 2 * tokens * C) << l.name;
    }
  }
  EXPECT_EQ(fc1_bias, c.n_layer);
  EXPECT_EQ(qkv_bias, c.n_layer);
  EXPECT_EQ(qkv, c.n_layer);
  EXPECT_EQ(fc1, c.n_layer);
  EXPECT_EQ(proj, c.n_layer);
}

// Every matrix product of the step has each dimension a multiple of 64, or under 64: the
// loss head multiplies GPT-2's 50,257-value vocabulary as 50,240 values and then 17 (its
// logits' rows padded to 50,304), never as one unaligned product (on an H200 cuBLAS ran those
// at a fifth of the aligned products' rate).
TEST(StepTrafficTest, EveryProductsDimensionsAreWhole64sOrUnder64) {
  const model::ModelConfig c = Tiny();
  ASSERT_EQ(c.vocab_size, 50257);
  const int64_t batch = 2, seq = 64;
  absl::StatusOr<std::vector<LaunchCost>> step = MeasuredStepTraffic(c, batch, seq);
  ASSERT_TRUE(step.ok()) << step.status();
  int head_pieces = 0;
  for (const LaunchCost& l : *step) {
    if (!IsProduct(l)) continue;
    const std::string shape = l.name.substr(l.name.rfind(' ') + 1);  // "m×n×k"
    int64_t dims[3] = {};
    ASSERT_EQ(std::sscanf(shape.c_str(), "%ld×%ld×%ld", &dims[0], &dims[1], &dims[2]), 3) << l.name;
    for (int64_t d : dims) EXPECT_TRUE(d % 64 == 0 || d < 64) << l.name;
    for (int64_t d : dims) head_pieces += d == 50240 || d == 17;
  }
  EXPECT_EQ(head_pieces, 6) << "the head's three products, each in two pieces";
}

TEST(StepTrafficTest, TheBatchExtrapolationIsWhatThatBatchCounts) {
  const model::ModelConfig c = Tiny("qk_norm_cap");
  absl::StatusOr<std::vector<LaunchCost>> projected = StepTraffic(c, 3, 32), counted = MeasuredStepTraffic(c, 3, 32);
  ASSERT_TRUE(projected.ok() && counted.ok());
  ASSERT_EQ(projected->size(), counted->size());
  for (size_t i = 0; i < counted->size(); ++i) {
    const LaunchCost &p = (*projected)[i], &m = (*counted)[i];
    EXPECT_EQ(p.name, m.name) << "launch " << i;
    // Sectors: a buffer's length that is not a whole number of sectors rounds differently at
    // each batch, by at most a sector a buffer the launch touches.
    EXPECT_NEAR(p.bytes_read, m.bytes_read, 256 + 1e-3 * m.bytes_read) << m.name;
    EXPECT_NEAR(p.bytes_written, m.bytes_written, 256 + 1e-3 * m.bytes_written) << m.name;
    EXPECT_EQ(p.flops, m.flops) << m.name;
  }
}

TEST(StepTrafficTest, ALaunchCostsItsLargerRooflineOrTheLaunchFloor) {
  Gpu gpu;
  gpu.peak_tflops = 1000, gpu.bandwidth_tbs = 2, gpu.product_efficiency = 0.5, gpu.memory_efficiency = 0.5;
  gpu.attention_efficiency = 0.25, gpu.launch_us = 2;
  const StepProjection p = ProjectStep({{"cublasGemmEx bf16→bf16 4096×4096×4096", true, 1e8, 0, 1e12},
                                        {"NormForwardKernel", false, 1e8, 1e8, 0},
                                        {"ForwardKernel<HD>", false, 1e6, 0, 1e12},
                                        {"ToBf16Kernel", false, 1e3, 1e3, 0}},
                                       gpu);
  ASSERT_EQ(p.launches.size(), 4u);
  EXPECT_DOUBLE_EQ(p.launches[0].us, 2000);  // 1e12 flops at 500 TFLOP/s
  EXPECT_EQ(p.launches[0].bound, "compute");
  EXPECT_DOUBLE_EQ(p.launches[1].us, 200);  // 2e8 bytes at 1 TB/s
  EXPECT_EQ(p.launches[1].bound, "memory");
  EXPECT_DOUBLE_EQ(p.launches[2].us, 4000);  // our kernels' flops at the attention's efficiency
  EXPECT_DOUBLE_EQ(p.launches[3].us, 2);
  EXPECT_EQ(p.launches[3].bound, "launch");
  EXPECT_DOUBLE_EQ(p.us, 6202);
}

TEST(StepTrafficTest, ACountedStepReadsBackAsWritten) {
  const std::string path = ::testing::TempDir() + "/step.tsv";
  const std::vector<LaunchCost> step = {{"cublasGemmEx bf16→bf16 768×16384×2304", true, 1.5e8, 2.25e7, 5.8e10},
                                        {"NormForwardKernel", false, 50331648, 25165824, 0}};
  ASSERT_TRUE(WriteLaunchCosts(path, step).ok());
  absl::StatusOr<std::vector<LaunchCost>> back = ReadLaunchCosts(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ((*back)[i].name, step[i].name);
    EXPECT_EQ((*back)[i].library, step[i].library);
    EXPECT_EQ((*back)[i].bytes_read, step[i].bytes_read);
    EXPECT_EQ((*back)[i].bytes_written, step[i].bytes_written);
    EXPECT_EQ((*back)[i].flops, step[i].flops);
  }
  std::ofstream(path) << "12\t3\tNormForwardKernel\n";
  back = ReadLaunchCosts(path);
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.status().message().find("step.tsv:1 is not a counted launch"), std::string::npos)
      << back.status().message();
  EXPECT_TRUE(absl::IsNotFound(ReadLaunchCosts(path + ".absent").status()));
}

}  // namespace
}  // namespace stability::cuda_traffic

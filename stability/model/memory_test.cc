#include "stability/model/memory.h"

#include <string>

#include "gtest/gtest.h"
#include "stability/base/rng.h"
#include "stability/model/model.h"
#include "stability/ops/testing/checked_device.h"

namespace stability::model {
namespace {

struct Case {
  std::string variant;
  nlohmann::json overrides;
};

// The model's own bytes at the peak of Create + Forward + Backward on a device — the stand-in
// GPU (ops::testing::CheckedDevice), which counts its memory, in fp32 and with the CUDA
// backend's bf16 storage (kept bf16 operands, bf16 logits) and fused attention (no
// probabilities stored) — against the estimate for every
// variant: the same number of bytes (a buffer added to model.cc must be counted in memory.cc).
TEST(MemoryTest, EstimateIsWhatTheModelAllocates) {
  std::vector<Case> cases;
  for (const char* v : {"baseline", "qk_norm", "qkv_norm", "qk_fc_norm", "soft_cap", "qk_norm_cap", "soft_temp",
                        "soft_clip", "sigma_reparam", "layer_scale"}) {
    cases.push_back({v, {}});
  }
  cases.push_back({"qkv_norm", {{"per_head_norm", true}, {"layer_scale", true}}});
  cases.push_back({"baseline", {{"position", "rope"}, {"tie_embeddings", false}}});
  cases.push_back({"qk_norm", {{"position", "rope"}, {"norm", "rmsnorm"}}});
  for (const auto mode : {ops::testing::CheckedDevice::Mode::kFp32, ops::testing::CheckedDevice::Mode::kBf16}) {
    ops::testing::CheckedDevice device(mode);
    const ops::Backend& be = *ops::GetBackend(device.device());
    if (mode == ops::testing::CheckedDevice::Mode::kBf16) {  // as a bf16 run sets it: fused attention
      ASSERT_TRUE(ops::GetBackend(device.device())->SetMatmulPrecision(ops::MatmulPrecision::kBf16));
      ASSERT_TRUE(ops::GetBackend(device.device())->SetAttentionKernel(ops::AttentionKernel::kFused));
    }
    for (const Case& k : cases) {
      nlohmann::json o = k.overrides;
      o["vocab_size"] = 96;
      o["n_embd"] = 32;
      o["n_head"] = 2;  // head dim 16: the fused attention stores no probabilities
      o["seq_len"] = 16;
      const ModelConfig config = *MakeConfig("tiny", k.variant, o);
      const int64_t batch = 3, seq = 16;
      Tensor ids = Tensor::Empty({batch, seq}, DType::kI32), targets = Tensor::Empty({batch, seq}, DType::kI32);
      Rng rng(5);
      for (int64_t i = 0; i < batch * seq; ++i) {
        ids.i32()[i] = static_cast<int32_t>(rng.Below(96));
        targets.i32()[i] = static_cast<int32_t>(rng.Below(96));
      }
      device.ResetPeak();
      const int64_t before = device.bytes_alive();
      int64_t peak = 0;
      {
        std::unique_ptr<Model> model = *Model::Create(config, 1, device.device());
        ASSERT_TRUE(model->Forward(ids, targets).ok());
        ASSERT_TRUE(model->Backward().ok());
        peak = device.peak_bytes() - before;
      }
      const TrainingMemory m = EstimateTrainingMemory(config, batch, seq, be);
      // Not counted here: AdamW's moments and the backend's scratch (the CPU's ops, which the
      // stand-in runs, keep theirs per thread, not on the device).
      const int64_t model_bytes = m.total() - m.optimizer - m.scratch;
      SCOPED_TRACE(std::string(mode == ops::testing::CheckedDevice::Mode::kBf16 ? "bf16 " : "fp32 ") + k.variant + " " +
                   k.overrides.dump());
      EXPECT_EQ(model_bytes, peak) << "the estimate no longer counts what model.cc allocates";
    }
  }
}

}  // namespace
}  // namespace stability::model

// The model on a stand-in GPU (ops::testing::CheckedDevice): every op must be handed device
// memory — a host buffer (the caller's token ids, say) throws — and the results must be the
// CPU's, bit for bit, for every variant preset and the orthogonal switches.
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "stability/base/rng.h"
#include "stability/model/model.h"
#include "stability/ops/testing/checked_device.h"

namespace stability::model {
namespace {

std::pair<Tensor, Tensor> Tokens(int64_t b, int64_t t, int64_t vocab) {
  Tensor ids = Tensor::Empty({b, t}, DType::kI32), targets = Tensor::Empty({b, t}, DType::kI32);
  Rng rng(9);
  for (int64_t i = 0; i < b * t; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
    targets.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
  }
  return {ids, targets};
}

// With either attention kernel: the fused one's contract (no probabilities on the device,
// the backward recomputes them) gives the same bits.
TEST(ModelOnADeviceTest, HandsItsKernelsDeviceMemoryOnlyAndGetsTheCpusBits) {
  ops::testing::CheckedDevice device;
  std::vector<std::pair<std::string, nlohmann::json>> cases;
  for (const std::string& v : VariantPresetNames()) cases.push_back({v, {}});
  cases.push_back({"qkv_norm", {{"per_head_norm", true}, {"layer_scale", true}}});
  cases.push_back({"baseline", {{"position", "rope"}, {"tie_embeddings", false}}});
  cases.push_back({"qk_norm", {{"position", "rope"}, {"norm", "rmsnorm"}}});
  for (const auto kernel : {ops::AttentionKernel::kGemm, ops::AttentionKernel::kFused})
    for (const auto& [variant, overrides] : cases) {
      const bool fused = kernel == ops::AttentionKernel::kFused;
      SCOPED_TRACE(variant + " " + overrides.dump() + (fused ? " fused" : " gemm"));
      ASSERT_TRUE(ops::GetBackend(device.device())->SetAttentionKernel(kernel));
      nlohmann::json o = overrides;
      o["vocab_size"] = 80;
      o["n_embd"] = 32;
      o["n_head"] = 2;  // head dim 16: one the fused kernel has
      o["seq_len"] = 16;
      const ModelConfig c = *MakeConfig("tiny", variant, o);
      EXPECT_EQ(ops::GetBackend(device.device())->AttentionStoresProbs(c.head_dim()), !fused);
      std::unique_ptr<Model> cpu = *Model::Create(c, 4), gpu = *Model::Create(c, 4, device.device());
      auto [ids, targets] = Tokens(2, 16, 80);
      for (int step = 0; step < 2; ++step) {  // the second reuses the first's buffers
        const absl::StatusOr<double> lc = cpu->Forward(ids, targets), lg = gpu->Forward(ids, targets);
        ASSERT_TRUE(lc.ok() && lg.ok());
        EXPECT_EQ(*lg, *lc);
        cpu->ZeroGrad();
        gpu->ZeroGrad();
        ASSERT_TRUE(cpu->Backward().ok());
        ASSERT_TRUE(gpu->Backward().ok());
      }
      for (size_t i = 0; i < cpu->parameters().size(); ++i) {
        const Tensor g = gpu->parameters()[i].grad.To(kCpu);
        ASSERT_EQ(0, std::memcmp(g.data(), cpu->parameters()[i].grad.data(), g.nbytes())) << cpu->parameters()[i].name;
      }
      EXPECT_EQ(gpu->telemetry().values(), cpu->telemetry().values());
    }
  EXPECT_GT(device.checked_ops(), 1000);
}

// The bf16 path's plumbing (a device that keeps bf16 operands, hands activations to the next
// product as bf16 and stores the logits in bf16; ops::testing::CheckedDevice::Mode::kBf16):
// with telemetry off the fp32 copies of the norms' and FC1's outputs are never written, so
// an op that read one instead of its bf16 operand would change the losses — they must be
// those with telemetry on, bit for bit; and the run stays within 3% of the fp32 CPU's.
TEST(ModelOnADeviceTest, Bf16PlumbingIsTheSameWithAndWithoutTelemetry) {
  ops::testing::CheckedDevice device(ops::testing::CheckedDevice::Mode::kBf16);
  for (const char* variant : {"baseline", "qk_norm", "sigma_reparam", "layer_scale"}) {
    SCOPED_TRACE(variant);
    const ModelConfig c = *MakeConfig("tiny", variant, {{"vocab_size", 80}, {"n_embd", 32}, {"seq_len", 16}});
    auto [ids, targets] = Tokens(2, 16, 80);
    std::vector<std::vector<double>> losses;
    for (bool telemetry : {true, false}) {
      std::unique_ptr<Model> m = *Model::Create(c, 4, device.device());
      m->set_telemetry(telemetry);
      std::vector<double> l;
      for (int step = 0; step < 3; ++step) {
        l.push_back(*m->Forward(ids, targets));
        m->ZeroGrad();
        ASSERT_TRUE(m->Backward().ok());
        for (Parameter& p : m->parameters()) {  // a plain SGD step, so that the steps differ
          Tensor g = p.grad.To(kCpu), v = p.value.To(kCpu);
          for (int64_t i = 0; i < v.numel(); ++i) v.f32()[i] -= 0.05f * g.f32()[i];
          p.CopyValueFromHost(v.data());
        }
      }
      losses.push_back(l);
    }
    EXPECT_EQ(losses[1], losses[0]);
    std::unique_ptr<Model> cpu = *Model::Create(c, 4);
    const double fp32 = *cpu->Forward(ids, targets);
    EXPECT_NEAR(losses[0][0], fp32, 3e-2 * fp32);
  }
}

}  // namespace
}  // namespace stability::model

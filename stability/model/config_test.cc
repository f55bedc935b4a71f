#include "stability/model/config.h"

#include <cstdint>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "stability/model/model.h"
#include "stability/ops/cpu/cpu_backend.h"

namespace stability::model {
namespace {

TEST(ConfigTest, EveryPresetCombinationIsValid) {
  for (const std::string& size : SizePresetNames()) {
    for (const std::string& variant : VariantPresetNames()) {
      absl::StatusOr<ModelConfig> c = MakeConfig(size, variant);
      ASSERT_TRUE(c.ok()) << size << "/" << variant << ": " << c.status();
      EXPECT_EQ(c->size, size);
      EXPECT_EQ(c->variant, variant);
    }
  }
}

TEST(ConfigTest, ParameterCountsOfKnownModels) {
  // GPT-2 small, as published (tied embeddings, biases everywhere): 124,439,808.
  EXPECT_EQ(ParameterCount(*MakeConfig("gpt2_124m", "baseline")), 124439808);
  // The paper's model: 24 × 1024, 16 heads, 256k vocab untied: ≈ 830M.
  const int64_t paper = ParameterCount(*MakeConfig("paper_830m", "baseline"));
  EXPECT_GT(paper, 820'000'000);
  EXPECT_LT(paper, 840'000'000);
}

TEST(ConfigTest, ParameterCountMatchesTheBuiltModel) {
  const nlohmann::json switches[] = {
      {},
      {{"norm", "rmsnorm"}},
      {{"per_head_norm", true}},
      {{"bias", false}},
      {{"position", "rope"}, {"tie_embeddings", false}},
  };
  for (const std::string& variant : VariantPresetNames()) {
    for (const nlohmann::json& s : switches) {
      nlohmann::json o = s;
      o["vocab_size"] = 50;
      absl::StatusOr<ModelConfig> c = MakeConfig("tiny", variant, o);
      ASSERT_TRUE(c.ok()) << c.status();
      auto model = Model::Create(*c, 1);
      ASSERT_TRUE(model.ok()) << model.status();
      // ParameterSizes is the built model's tensors in order, and each gradient is its slot
      // of the one gradient buffer: 64-byte aligned, in order, none overlapping.
      std::vector<int64_t> built;
      const float* slot = (*model)->gradients().f32();
      for (const Parameter& p : (*model)->parameters()) {
        built.push_back(p.value.numel());
        EXPECT_EQ(p.grad.f32(), slot) << p.name;
        EXPECT_EQ(p.grad.shape(), p.value.shape()) << p.name;
        EXPECT_EQ(reinterpret_cast<uintptr_t>(p.grad.data()) % 64, 0u) << p.name;
        slot += GradientSlot(p.value.numel());
      }
      EXPECT_EQ(slot, (*model)->gradients().f32() + (*model)->gradients().numel());
      EXPECT_EQ(built, ParameterSizes(*c)) << variant << " " << s.dump();
      EXPECT_EQ(std::accumulate(built.begin(), built.end(), int64_t{0}), ParameterCount(*c));
    }
  }
}

TEST(ConfigTest, JsonRoundTrip) {
  ModelConfig c = *MakeConfig("small", "qk_norm_cap");
  c.norm = ops::NormKind::kRMSNorm;
  c.position = Position::kRope;
  c.activation = ops::Activation::kRelu;
  c.z_loss = 1e-4f;
  absl::StatusOr<ModelConfig> back = ConfigFromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), c.ToJson());
  EXPECT_EQ(c.ToJson()["norm"], "rmsnorm");
  EXPECT_EQ(c.ToJson()["attn_soft_cap"], 50.0);
}

TEST(ConfigTest, ErrorsNameTheFieldAndTheFix) {
  const auto message = [](const nlohmann::json& j) {
    absl::StatusOr<ModelConfig> c = ConfigFromJson(j);
    EXPECT_FALSE(c.ok()) << j.dump();
    return std::string(c.status().message());
  };
  EXPECT_NE(message({{"n_embd", 100}, {"n_head", 3}}).find("n_embd = 100 must be divisible by n_head = 3"),
            std::string::npos);
  EXPECT_NE(message({{"qk_nrom", true}}).find("unknown model config field \"qk_nrom\""), std::string::npos);
  EXPECT_NE(message({{"n_layer", "two"}}).find("\"n_layer\" must be an integer, got \"two\""), std::string::npos);
  EXPECT_NE(message({{"norm", "batchnorm"}}).find("must be one of layernorm, rmsnorm"), std::string::npos);
  EXPECT_NE(message({{"n_layer", 0}}).find("n_layer = 0 must be at least 1"), std::string::npos);
  EXPECT_NE(message({{"attn_temperature", 0}}).find("attn_temperature"), std::string::npos);
  EXPECT_NE(message({{"position", "rope"}, {"n_embd", 12}, {"n_head", 4}}).find("even head_dim"), std::string::npos);
  EXPECT_NE(std::string(MakeConfig("huge", "baseline").status().message()).find("choose one of: gpt2_124m"),
            std::string::npos);
  EXPECT_NE(std::string(MakeConfig("tiny", "qknorm").status().message()).find("unknown variant \"qknorm\""),
            std::string::npos);
}

TEST(ConfigTest, VariantsSetWhatThePaperDescribes) {
  EXPECT_FALSE(MakeConfig("tiny", "qkv_norm")->n1);
  EXPECT_TRUE(MakeConfig("tiny", "qkv_norm")->v_norm);
  EXPECT_TRUE(MakeConfig("tiny", "qk_fc_norm")->fc2_norm);
  EXPECT_EQ(MakeConfig("tiny", "qk_norm_cap")->attn_soft_cap, 50.0f);
  EXPECT_EQ(MakeConfig("tiny", "soft_temp")->attn_temperature, 0.5f);
  EXPECT_TRUE(MakeConfig("tiny", "soft_clip")->softmax_clip);
}

}  // namespace
}  // namespace stability::model

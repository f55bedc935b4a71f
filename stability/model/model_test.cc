#include "stability/model/model.h"

#include <cmath>

#include "gtest/gtest.h"
#include "stability/base/rng.h"

namespace stability::model {
namespace {

ModelConfig Small(const std::string& variant = "baseline", nlohmann::json o = {}) {
  o["vocab_size"] = 64;
  o["n_embd"] = 32;
  o["seq_len"] = 16;
  return *MakeConfig("tiny", variant, o);
}

std::pair<Tensor, Tensor> Tokens(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  Tensor ids = Tensor::Empty({b, t}, DType::kI32), targets = Tensor::Empty({b, t}, DType::kI32);
  Rng rng(seed);
  for (int64_t i = 0; i < b * t; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
    targets.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
  }
  return {ids, targets};
}

TEST(ModelTest, ParameterNamesFollowTheTable) {
  auto m = *Model::Create(Small("qk_fc_norm", {{"tie_embeddings", false}, {"layer_scale", true}}), 1);
  for (const char* name : {"wte.weight", "wpe.weight", "h.0.n1.weight", "h.0.n1.bias", "h.0.qkv.weight",
                           "h.0.qkv.bias", "h.0.q_norm.weight", "h.0.k_norm.weight", "h.0.proj.weight",
                           "h.0.proj_norm.weight", "h.0.proj_scale", "h.0.n2.weight", "h.0.fc1.weight",
                           "h.1.fc2.weight", "h.1.fc2_norm.bias", "h.1.fc2_scale", "nf.weight", "lm_head.weight"}) {
    EXPECT_NE(m->FindParameter(name), nullptr) << name;
  }
  EXPECT_EQ(m->FindParameter("h.0.v_norm.weight"), nullptr);
  EXPECT_EQ(m->FindParameter("h.0.qkv.weight")->value.shape(), (Shape{96, 32}));  // [out, in]
  EXPECT_TRUE(m->FindParameter("h.0.fc1.weight")->weight_decay);
  EXPECT_FALSE(m->FindParameter("h.0.fc1.bias")->weight_decay);
  EXPECT_FALSE(m->FindParameter("wte.weight")->weight_decay);
}

TEST(ModelTest, Gpt2Initialisation) {
  ModelConfig c = Small();
  c.n_layer = 8;
  c.n_embd = 128;
  auto m = *Model::Create(c, 7);
  const auto stddev = [](const Tensor& t) {
    double s = 0;
    for (int64_t i = 0; i < t.numel(); ++i) s += double(t.f32()[i]) * t.f32()[i];
    return std::sqrt(s / t.numel());
  };
  EXPECT_NEAR(stddev(m->FindParameter("h.3.fc1.weight")->value), 0.02, 0.0005);
  EXPECT_NEAR(stddev(m->FindParameter("h.3.fc2.weight")->value), 0.02 / 4, 0.0002);  // 1/sqrt(2·8)
  EXPECT_NEAR(stddev(m->FindParameter("h.3.proj.weight")->value), 0.02 / 4, 0.0003);
  EXPECT_EQ(m->FindParameter("h.3.n1.weight")->value.f32()[5], 1.0f);
  EXPECT_EQ(m->FindParameter("h.3.qkv.bias")->value.f32()[5], 0.0f);
}

TEST(ModelTest, LossAtInitIsNearLogVocabAndSameSeedIsBitwiseSame) {
  const ModelConfig c = Small("qk_norm");
  auto [ids, targets] = Tokens(2, 16, c.vocab_size, 3);
  auto a = *Model::Create(c, 5), b = *Model::Create(c, 5), other = *Model::Create(c, 6);
  const double la = *a->Forward(ids, targets), lb = *b->Forward(ids, targets);
  EXPECT_EQ(la, lb);
  EXPECT_NE(la, *other->Forward(ids, targets));
  EXPECT_NEAR(la, std::log(64.0), 0.1);
}

TEST(ModelTest, GradientsAccumulateAcrossBackwardCalls) {
  const ModelConfig c = Small("sigma_reparam");
  auto [ids, targets] = Tokens(2, 8, c.vocab_size, 3);
  auto m = *Model::Create(c, 1);
  m->set_training(false);  // the same σ for both passes
  ASSERT_TRUE(m->Forward(ids, targets).ok());
  m->ZeroGrad();
  ASSERT_TRUE(m->Backward().ok());
  const Tensor once = m->FindParameter("h.1.fc1.weight")->grad.Clone();
  const float gain_once = m->FindParameter("h.1.fc1.sigma_gain")->grad.f32()[0];
  // One Backward a Forward: it overwrites the logits with their gradient.
  EXPECT_EQ(m->Backward().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(m->Forward(ids, targets).ok());
  ASSERT_TRUE(m->Backward().ok());
  const Tensor& twice = m->FindParameter("h.1.fc1.weight")->grad;
  for (int64_t i = 0; i < once.numel(); ++i) EXPECT_NEAR(twice.f32()[i], 2 * once.f32()[i], 1e-7);
  EXPECT_NEAR(m->FindParameter("h.1.fc1.sigma_gain")->grad.f32()[0], 2 * gain_once, 1e-6);
}

TEST(ModelTest, GradientDescentLowersTheLoss) {
  const ModelConfig c = Small("qkv_norm", {{"position", "rope"}});
  auto [ids, targets] = Tokens(2, 16, c.vocab_size, 3);
  auto m = *Model::Create(c, 1);
  const double first = *m->Forward(ids, targets);
  double last = first;
  for (int step = 0; step < 20; ++step) {
    m->ZeroGrad();
    ASSERT_TRUE(m->Backward().ok());
    for (Parameter& p : m->parameters())
      for (int64_t i = 0; i < p.value.numel(); ++i) p.value.f32()[i] -= 0.5f * p.grad.f32()[i];
    last = *m->Forward(ids, targets);
  }
  EXPECT_LT(last, first - 0.5) << "20 steps of SGD on one batch should memorise part of it";
}

TEST(ModelTest, TelemetryHasEveryFixedName) {
  const ModelConfig c = Small("sigma_reparam");
  auto [ids, targets] = Tokens(1, 8, c.vocab_size, 3);
  auto m = *Model::Create(c, 1);
  ASSERT_TRUE(m->Forward(ids, targets).ok());
  ASSERT_TRUE(m->Backward().ok());
  m->ComputeGradNorms();
  const Telemetry& t = m->telemetry();
  for (int l = 0; l < 2; ++l) {
    for (const char* layer : {"qkv", "proj", "fc1", "fc2"}) {
      for (const char* what : {"out_norm", "in_norm", "weight_norm", "sigma"}) {
        const std::string name = "h." + std::to_string(l) + "." + layer + "." + what;
        EXPECT_TRUE(std::isfinite(t.Get(name))) << name;
        EXPECT_GT(t.Get(name), 0) << name;
      }
    }
    EXPECT_TRUE(std::isfinite(t.Get("h." + std::to_string(l) + ".attn.max_logit")));
    EXPECT_GT(t.Get("h." + std::to_string(l) + ".attn.entropy"), 0);
  }
  for (const char* name : {"loss", "ce_loss", "logits.max", "logits.mean_log_z", "grad_norm",
                           "grad_norm.h.0.qkv.weight"}) {
    EXPECT_TRUE(std::isfinite(t.Get(name))) << name;
  }
  EXPECT_TRUE(std::isnan(t.Get("no.such.name")));
}

TEST(ModelTest, BadInputsAreErrorsNotCrashes) {
  const ModelConfig c = Small();
  auto m = *Model::Create(c, 1);
  auto [ids, targets] = Tokens(1, 8, c.vocab_size, 3);
  ids.i32()[5] = 64;
  absl::StatusOr<double> r = m->Forward(ids, targets);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("input token 64 at position 5 is outside the vocabulary [0, 64)"),
            std::string::npos)
      << r.status();
  auto [long_ids, long_targets] = Tokens(1, 17, c.vocab_size, 3);
  EXPECT_NE(m->Forward(long_ids, long_targets).status().message().find("seq_len = 16"), std::string::npos);
  auto fresh = *Model::Create(c, 1);
  EXPECT_EQ(fresh->Backward().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace stability::model

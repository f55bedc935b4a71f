// Five training steps (model, AdamW with clipping, gradient norms) on a stand-in GPU whose
// backend refuses any pointer that is not device memory, against the same steps on the CPU:
// the same losses and parameters, bit for bit. What a GPU run does to host and device
// memory, checked where there is no GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "stability/base/rng.h"
#include "stability/model/config.h"
#include "stability/model/model.h"
#include "stability/ops/testing/checked_device.h"
#include "stability/optim/adamw.h"

namespace stability {
namespace {

std::pair<Tensor, Tensor> Tokens(int64_t vocab) {
  Tensor ids = Tensor::Empty({2, 16}, DType::kI32), targets = Tensor::Empty({2, 16}, DType::kI32);
  Rng rng(3);
  for (int64_t i = 0; i < 32; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
    targets.i32()[i] = static_cast<int32_t>(rng.Below(vocab));
  }
  return {ids, targets};
}

std::vector<double> Train(Device device, const model::ModelConfig& c, std::vector<Tensor>* params_out) {
  std::unique_ptr<model::Model> m = *model::Model::Create(c, 5, device);
  optim::AdamW opt(&m->parameters(), {});
  auto [ids, targets] = Tokens(c.vocab_size);
  std::vector<double> losses;
  for (int step = 0; step < 5; ++step) {
    losses.push_back(*m->Forward(ids, targets));
    m->ZeroGrad();
    EXPECT_TRUE(m->Backward().ok());
    m->ComputeGradNorms();
    opt.Step(1e-2, 0.5);  // clipping on: the gradient norm's reductions run every step
  }
  for (const Parameter& p : m->parameters()) params_out->push_back(p.value.To(kCpu));
  return losses;
}

TEST(TrainingOnDeviceTest, HandsItsKernelsDeviceMemoryOnlyAndGetsTheCpusBits) {
  ops::testing::CheckedDevice device;
  for (const char* variant : {"baseline", "qk_norm_cap", "sigma_reparam", "layer_scale"}) {
    SCOPED_TRACE(variant);
    const model::ModelConfig c =
        *model::MakeConfig("tiny", variant, {{"vocab_size", 80}, {"n_embd", 32}, {"seq_len", 16}});
    std::vector<Tensor> on_cpu, on_device;
    const std::vector<double> cpu = Train(kCpu, c, &on_cpu), dev = Train(device.device(), c, &on_device);
    EXPECT_EQ(dev, cpu);
    EXPECT_LT(cpu.back(), cpu.front());  // it trains
    ASSERT_EQ(on_device.size(), on_cpu.size());
    for (size_t i = 0; i < on_cpu.size(); ++i) {
      ASSERT_EQ(0, std::memcmp(on_device[i].data(), on_cpu[i].data(), on_cpu[i].nbytes())) << "parameter " << i;
    }
  }
}

// The products' bf16 weight operands are the optimizer's copies (Parameter::value_bf16, written
// by AdamW in its pass): the losses of an AdamW run are bit for bit those of the same run with
// every copy rounded again by each forward; and a write of a weight that leaves its copy marked
// current is caught — the device compares the copy it is told to read with the weight.
TEST(TrainingOnDeviceTest, Bf16WeightOperandsAreTheOptimizersCopies) {
  ops::testing::CheckedDevice device(ops::testing::CheckedDevice::Mode::kBf16);
  for (const char* variant : {"baseline", "sigma_reparam"}) {
    SCOPED_TRACE(variant);
    const model::ModelConfig c =
        *model::MakeConfig("tiny", variant, {{"vocab_size", 80}, {"n_embd", 32}, {"seq_len", 16}});
    auto [ids, targets] = Tokens(80);
    std::vector<std::vector<double>> losses;
    for (bool round_again : {false, true}) {
      std::unique_ptr<model::Model> m = *model::Model::Create(c, 4, device.device());
      optim::AdamW opt(&m->parameters(), {});
      std::vector<double> l;
      for (int step = 0; step < 3; ++step) {
        if (round_again) {
          for (Parameter& p : m->parameters()) p.value_bf16_current = false;
        }
        l.push_back(*m->Forward(ids, targets));
        m->ZeroGrad();
        ASSERT_TRUE(m->Backward().ok());
        opt.Step(1e-2, 1.0);
        const Parameter& w = *m->FindParameter("h.0.fc1.weight");
        EXPECT_EQ(w.value_bf16.defined() && w.value_bf16_current, std::string(variant) == "baseline")
            << "σ-reparam multiplies a derived weight: no copy of the parameter";
      }
      losses.push_back(l);
    }
    EXPECT_EQ(losses[1], losses[0]);
  }
  const model::ModelConfig c =
      *model::MakeConfig("tiny", "baseline", {{"vocab_size", 80}, {"n_embd", 32}, {"seq_len", 16}});
  auto [ids, targets] = Tokens(80);
  std::unique_ptr<model::Model> m = *model::Model::Create(c, 4, device.device());
  optim::AdamW opt(&m->parameters(), {});
  ASSERT_TRUE(m->Forward(ids, targets).ok());
  m->ZeroGrad();
  ASSERT_TRUE(m->Backward().ok());
  opt.Step(1e-2, 1.0);
  Parameter& w = *m->FindParameter("h.1.qkv.weight");
  Tensor v = w.value.To(kCpu);
  v.f32()[3] += 0.25f;
  w.value.CopyFromHost(v.data());  // not CopyValueFromHost: the flag left set
  EXPECT_THROW(m->Forward(ids, targets).IgnoreError(), std::logic_error);
}

// In bf16 the device keeps the logits' rows 64 values apart (Backend::LogitsRowStride: 80 →
// 128), the padding never written (NaN here, as new device memory). Model::logits() gives the
// rows without it: [B·T, 80], all finite, and the loss is their cross-entropy (each row's
// log-sum-exp less its target's logit, averaged) — a row read from the wrong place would not be.
TEST(TrainingOnDeviceTest, Bf16LogitsRowsArePaddedOnTheDeviceAndReadWithoutThePadding) {
  ops::testing::CheckedDevice device(ops::testing::CheckedDevice::Mode::kBf16);
  const model::ModelConfig c =
      *model::MakeConfig("tiny", "baseline", {{"vocab_size", 80}, {"n_embd", 32}, {"seq_len", 16}});
  auto [ids, targets] = Tokens(80);
  std::unique_ptr<model::Model> m = *model::Model::Create(c, 4, device.device());
  const double loss = *m->Forward(ids, targets);
  const Tensor logits = m->logits();
  ASSERT_EQ(logits.shape(), (Shape{32, 80}));
  ASSERT_EQ(logits.dtype(), DType::kBF16);
  EXPECT_EQ(logits.device(), device.device());
  const Tensor host = logits.To(kCpu);
  const auto* bits = static_cast<const uint16_t*>(host.data());
  double total = 0;
  for (int64_t r = 0; r < 32; ++r) {
    std::vector<double> row(80);
    double largest = -1e300;
    for (int64_t j = 0; j < 80; ++j) {
      const uint32_t u = static_cast<uint32_t>(bits[r * 80 + j]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      ASSERT_TRUE(std::isfinite(f)) << "row " << r << " value " << j;
      row[j] = f;
      largest = std::max(largest, row[j]);
    }
    double sum = 0;
    for (double z : row) sum += std::exp(z - largest);
    total += largest + std::log(sum) - row[targets.i32()[r]];
  }
  EXPECT_NEAR(total / 32, loss, 1e-5 * loss);
}

}  // namespace
}  // namespace stability

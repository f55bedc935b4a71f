// Five training steps (model, AdamW with clipping, gradient norms) on a stand-in GPU whose
// backend refuses any pointer that is not device memory, against the same steps on the CPU:
// the same losses and parameters, bit for bit. What a GPU run does to host and device
// memory, checked where there is no GPU.
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "stability/base/rng.h"
#include "stability/model/config.h"
#include "stability/model/model.h"
#include "stability/ops/testing/checked_device.h"
#include "stability/optim/adamw.h"

namespace stability {
namespace {

std::vector<double> Train(Device device, const model::ModelConfig& c, std::vector<Tensor>* params_out) {
  std::unique_ptr<model::Model> m = *model::Model::Create(c, 5, device);
  optim::AdamW opt(&m->parameters(), {});
  Tensor ids = Tensor::Empty({2, 16}, DType::kI32), targets = Tensor::Empty({2, 16}, DType::kI32);
  Rng rng(3);
  for (int64_t i = 0; i < 32; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.Below(c.vocab_size));
    targets.i32()[i] = static_cast<int32_t>(rng.Below(c.vocab_size));
  }
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

}  // namespace
}  // namespace stability

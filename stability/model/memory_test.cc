#include "stability/model/memory.h"

#include <cstdlib>
#include <map>
#include <string>

#include "gtest/gtest.h"
#include "stability/base/rng.h"
#include "stability/model/model.h"

namespace stability::model {
namespace {

// The CPU's allocator, counting the bytes alive and their peak.
class CountingAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (p == nullptr) throw std::bad_alloc();
    sizes_[p] = bytes;
    alive_ += static_cast<int64_t>(bytes);
    peak_ = std::max(peak_, alive_);
    return p;
  }
  void Free(void* ptr) override {
    if (auto it = sizes_.find(ptr); it != sizes_.end()) {
      alive_ -= static_cast<int64_t>(it->second);
      sizes_.erase(it);
    }
    std::free(ptr);
  }
  void Zero(void* ptr, size_t bytes) override { std::memset(ptr, 0, bytes); }
  void CopyFromHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  int64_t peak() const { return peak_; }
  void ResetPeak() { peak_ = alive_; }
  int64_t alive() const { return alive_; }

 private:
  std::map<void*, size_t> sizes_;
  int64_t alive_ = 0, peak_ = 0;
};

struct Case {
  std::string variant;
  nlohmann::json overrides;
};

// The model's own bytes at the peak of Create + Forward + Backward on the CPU, counted by the
// allocator, against the estimate for every variant: the same number of bytes (a buffer added
// to model.cc must be counted in memory.cc).
TEST(MemoryTest, EstimateIsWhatTheModelAllocates) {
  std::vector<Case> cases;
  for (const char* v : {"baseline", "qk_norm", "qkv_norm", "qk_fc_norm", "soft_cap", "qk_norm_cap", "soft_temp",
                        "soft_clip", "sigma_reparam", "layer_scale"}) {
    cases.push_back({v, {}});
  }
  cases.push_back({"qkv_norm", {{"per_head_norm", true}, {"layer_scale", true}}});
  cases.push_back({"baseline", {{"position", "rope"}, {"tie_embeddings", false}}});
  cases.push_back({"qk_norm", {{"position", "rope"}, {"norm", "rmsnorm"}}});
  const ops::Backend& cpu = *ops::GetBackend(kCpu);
  for (const Case& k : cases) {
    nlohmann::json o = k.overrides;
    o["vocab_size"] = 96;
    o["n_embd"] = 32;
    o["seq_len"] = 16;
    const ModelConfig config = *MakeConfig("tiny", k.variant, o);
    const int64_t batch = 3, seq = 16;
    Tensor ids = Tensor::Empty({batch, seq}, DType::kI32), targets = Tensor::Empty({batch, seq}, DType::kI32);
    Rng rng(5);
    for (int64_t i = 0; i < batch * seq; ++i) {
      ids.i32()[i] = static_cast<int32_t>(rng.Below(96));
      targets.i32()[i] = static_cast<int32_t>(rng.Below(96));
    }
    static CountingAllocator counting;  // outlives every tensor it makes
    Allocator* cpu_allocator = RegisterAllocator(DeviceType::kCpu, &counting);
    counting.ResetPeak();
    const int64_t before = counting.alive();
    int64_t peak = 0;
    {
      std::unique_ptr<Model> model = *Model::Create(config, 1);
      ASSERT_TRUE(model->Forward(ids, targets).ok());
      ASSERT_TRUE(model->Backward().ok());
      peak = counting.peak() - before;
    }
    RegisterAllocator(DeviceType::kCpu, cpu_allocator);
    const TrainingMemory m = EstimateTrainingMemory(config, batch, seq, cpu);
    // Not counted here: AdamW's moments, the backend's scratch (the CPU's is per thread, not
    // tensors) and the token ids (on the CPU the model reads the caller's).
    const int64_t model_bytes = m.total() - m.optimizer - m.scratch - 4 * 2 * batch * seq;
    SCOPED_TRACE(k.variant + " " + k.overrides.dump());
    EXPECT_EQ(model_bytes, peak) << "the estimate no longer counts what model.cc allocates";
  }
}

}  // namespace
}  // namespace stability::model

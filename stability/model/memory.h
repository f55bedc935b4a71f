// What a training step holds in the memory of its device, counted from the configuration
// the way Model allocates it (memory_test.cc measures the model's real allocations against
// this count for every variant), so that a run that cannot fit is refused before it starts
// and one that can is not:
//
//   TrainingMemory m = EstimateTrainingMemory(config, batch, seq, backend);
//   if (m.total() > free_bytes) ... m.ToString() says where the bytes go
#ifndef STABILITY_MODEL_MEMORY_H_
#define STABILITY_MODEL_MEMORY_H_

#include <cstdint>
#include <string>

#include "stability/model/config.h"
#include "stability/ops/backend.h"

namespace stability::model {

// Bytes, by what holds them.
struct TrainingMemory {
  int64_t parameters = 0;   // values and gradients (fp32), σ-reparam's W_eff and its gradient
  int64_t optimizer = 0;    // AdamW's two moments (fp32)
  int64_t activations = 0;  // what Forward keeps for Backward, and Backward's own buffers
  int64_t logits = 0;       // the logits [B·T, V] (rows Backend::LogitsRowStride apart), their gradient in place
  int64_t bf16 = 0;         // the bf16 operands the linear layers keep (backends that keep them)
  int64_t scratch = 0;      // the backend's: the attention's T×T tiles or bf16 heads, and slack
  int64_t total() const { return parameters + optimizer + activations + logits + bf16 + scratch; }
  std::string ToString() const;  // "12.3 GiB: activations 8.1, logits 2.0, ..."
};

// `be` is the device's backend with its precision and attention kernel already set (they
// decide whether bf16 operands are kept and whether the B·H·T² probabilities are stored).
TrainingMemory EstimateTrainingMemory(const ModelConfig& config, int64_t batch, int64_t seq, const ops::Backend& be);

}  // namespace stability::model

#endif  // STABILITY_MODEL_MEMORY_H_

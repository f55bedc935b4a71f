// Where a run trains: --device=auto|cpu|cuda|cuda:N to a Device whose backend is ready,
// and whether the model and its activations fit in that GPU's memory.
#ifndef STABILITY_TRAIN_DEVICE_H_
#define STABILITY_TRAIN_DEVICE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "stability/base/tensor.h"
#include "stability/model/config.h"
#include "stability/ops/backend.h"

namespace stability::train {

// auto: cuda:0 when a GPU is visible and CUDA was built, else the CPU. cuda / cuda:N:
// that GPU or a clear error (no GPU, no CUDA in this build, no such index).
absl::StatusOr<Device> ResolveDevice(const std::string& flag);

// Bytes a training step needs on the device: parameters, gradients and the two AdamW
// moments (16 bytes a parameter), plus the activations kept for backward (per layer
// ~24·C + 4·C·mlp_ratio floats a token, and the B·H·T² attention probabilities unless a
// fused attention kernel recomputes them), the bf16 operands the linear layers keep for
// backward where the backend multiplies in bf16 (2 bytes a value: 7·C a token a layer,
// the head's input and every weight), and the logits with their gradient. An estimate;
// `be` is the device's backend with its precision and attention kernel already set.
int64_t EstimateTrainingBytes(const model::ModelConfig& config, int64_t batch, int64_t seq, const ops::Backend& be);

// OK on the CPU; on a GPU, an error naming the bytes needed and free when it cannot fit.
absl::Status CheckFits(Device device, const model::ModelConfig& config, int64_t batch, int64_t seq);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_DEVICE_H_

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

// Sets the backend of `device` to the run's precision (fp32 | bf16) and attention kernel
// (auto | gemm | fused; auto: fused where the products are bf16, its fast path) — between
// steps, never between a forward and its backward. Returns whether the attention is fused;
// an error naming the flag where the device has no such mode (bf16 and fused need a GPU).
absl::StatusOr<bool> ConfigureBackend(Device device, const std::string& precision, const std::string& attention);

// On a device that reports its memory (a GPU): an error naming the bytes needed
// (model::EstimateTrainingMemory, with where they go) and free when the run cannot fit, else
// the same numbers as a line for the log ("needs about 12.3 GiB: ...; 70.1 GiB of 79.1 GiB are
// free"); "" on the CPU. The device's backend must have its precision and attention kernel
// set: they decide what is kept.
absl::StatusOr<std::string> CheckFits(Device device, const model::ModelConfig& config, int64_t batch, int64_t seq);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_DEVICE_H_

#include "stability/train/device.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "stability/model/config.h"
#include "stability/ops/cuda/cuda_backend.h"

namespace stability::train {

absl::StatusOr<Device> ResolveDevice(const std::string& flag) {
  if (flag == "cpu") return kCpu;
  if (flag == "auto") {
    absl::StatusOr<ops::Backend*> gpu = ops::cuda::InitCudaBackend(0);
    return gpu.ok() ? (*gpu)->device() : kCpu;
  }
  int index = 0;
  if (flag != "cuda" && !(flag.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(flag.substr(5), &index) && index >= 0)) {
    return absl::InvalidArgumentError(absl::StrFormat("--device=%s must be auto, cpu, cuda or cuda:N", flag));
  }
  absl::StatusOr<ops::Backend*> gpu = ops::cuda::InitCudaBackend(index);
  if (!gpu.ok()) return absl::UnavailableError(absl::StrFormat("--device=%s: %s", flag, gpu.status().message()));
  return (*gpu)->device();
}

int64_t EstimateTrainingBytes(const model::ModelConfig& c, int64_t batch, int64_t seq, const ops::Backend& be) {
  const int64_t n = batch * seq, C = c.n_embd, F = c.mlp_ratio * C;
  const int64_t params = model::ParameterCount(c);
  const bool probs = be.AttentionStoresProbs(c.n_embd / c.n_head);
  const int64_t per_layer = n * (24 * C + 4 * F) + (probs ? batch * c.n_head * seq * seq : 0);
  const int64_t head = 4 * n * c.vocab_size;  // logits, their gradient, and slack
  const int64_t kept_bf16 = be.KeepsBf16Operands() ? c.n_layer * n * (3 * C + F) + n * C + params : 0;
  return 4 * (4 * params + c.n_layer * per_layer + head) + 2 * kept_bf16;
}

absl::Status CheckFits(Device device, const model::ModelConfig& config, int64_t batch, int64_t seq) {
  if (device.type == DeviceType::kCpu) return absl::OkStatus();
  const int64_t need = EstimateTrainingBytes(config, batch, seq, *ops::GetBackend(device));
  const ops::cuda::MemoryInfo mem = ops::cuda::GpuMemory(device.index);
  if (need > mem.free_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the run needs about %.1f GiB on %s (parameters, gradients, AdamW moments and activations for batch %d × %d "
        "tokens); %.1f GiB of %.1f GiB are free: lower --batch or --seq, use --grad_accum, or a smaller --preset",
        need / 1073741824.0, device.ToString(), batch, seq, mem.free_bytes / 1073741824.0,
        mem.total_bytes / 1073741824.0));
  }
  return absl::OkStatus();
}

}  // namespace stability::train

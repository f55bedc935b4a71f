#include "stability/train/device.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "stability/model/config.h"
#include "stability/model/memory.h"
#include "stability/ops/cuda/cuda_backend.h"

namespace stability::train {

namespace {

// A GPU's backend: the one registered for it already (by an earlier InitCudaBackend, or a
// test's stand-in device: ops::testing::CheckedDevice), else InitCudaBackend's.
absl::StatusOr<ops::Backend*> GpuBackend(int index) {
  ops::Backend* registered = ops::GetBackend({DeviceType::kCuda, index});
  if (registered != nullptr && registered->device().index == index) return registered;
  return ops::cuda::InitCudaBackend(index);
}

}  // namespace

absl::StatusOr<Device> ResolveDevice(const std::string& flag) {
  if (flag == "cpu") return kCpu;
  if (flag == "auto") {
    absl::StatusOr<ops::Backend*> gpu = GpuBackend(0);
    return gpu.ok() ? (*gpu)->device() : kCpu;
  }
  int index = 0;
  if (flag != "cuda" && !(flag.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(flag.substr(5), &index) && index >= 0)) {
    return absl::InvalidArgumentError(absl::StrFormat("--device=%s must be auto, cpu, cuda or cuda:N", flag));
  }
  absl::StatusOr<ops::Backend*> gpu = GpuBackend(index);
  if (!gpu.ok()) return absl::UnavailableError(absl::StrFormat("--device=%s: %s", flag, gpu.status().message()));
  return (*gpu)->device();
}

absl::StatusOr<bool> ConfigureBackend(Device device, const std::string& precision, const std::string& attention) {
  ops::Backend& backend = *ops::GetBackend(device);
  const ops::MatmulPrecision mode = precision == "bf16" ? ops::MatmulPrecision::kBf16 : ops::MatmulPrecision::kFp32;
  if (!backend.SetMatmulPrecision(mode)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--precision=%s needs a GPU (--device=cuda); the %s backend computes in fp32", precision, device.ToString()));
  }
  const bool fused = attention == "fused" || (attention == "auto" && mode == ops::MatmulPrecision::kBf16);
  if (!backend.SetAttentionKernel(fused ? ops::AttentionKernel::kFused : ops::AttentionKernel::kGemm)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--attention=fused needs a GPU (--device=cuda); the %s backend has the gemm kernel only", device.ToString()));
  }
  return fused;
}

absl::StatusOr<std::string> CheckFits(Device device, const model::ModelConfig& config, int64_t batch, int64_t seq) {
  const ops::Backend& backend = *ops::GetBackend(device);
  const ops::DeviceMemory mem = backend.Memory();
  if (mem.total_bytes == 0) return std::string();  // the backend does not track its memory
  const model::TrainingMemory need = model::EstimateTrainingMemory(config, batch, seq, backend);
  const std::string free =
      absl::StrFormat("%.1f GiB of %.1f GiB are free", mem.free_bytes / 1073741824.0, mem.total_bytes / 1073741824.0);
  if (need.total() > mem.free_bytes) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the run needs about %s on %s for batch %d × %d tokens; %s: lower --batch or --seq, use --grad_accum, or a "
        "smaller --preset",
        need.ToString(), device.ToString(), batch, seq, free));
  }
  return absl::StrFormat("needs about %s; %s", need.ToString(), free);
}

}  // namespace stability::train

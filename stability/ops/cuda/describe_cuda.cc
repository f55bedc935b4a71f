#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "stability/ops/cuda/device_query.h"

namespace stability::cuda {

std::string DescribeCuda(const CudaInfo& info) {
  if (!info.compiled) return "not built (" + info.unavailable_reason + ")";
  std::string line = absl::StrFormat("CUDA %d.%d runtime", info.runtime_version / 1000,
                                     (info.runtime_version % 1000) / 10);
  if (info.devices.empty()) return line + ": no GPU (" + info.unavailable_reason + ")";
  std::vector<std::string> gpus;
  for (const CudaDevice& d : info.devices) {
    gpus.push_back(absl::StrFormat("[%d] %s (sm_%d%d, %.1f GiB, %d SMs%s)", d.index, d.name,
                                   d.compute_major, d.compute_minor,
                                   d.total_memory_bytes / double(1 << 30), d.multiprocessors,
                                   d.kernel_ran ? "" : ", TEST KERNEL FAILED"));
  }
  return absl::StrFormat("%s: %d GPU%s: %s", line, info.devices.size(),
                         info.devices.size() == 1 ? "" : "s", absl::StrJoin(gpus, ", "));
}

}  // namespace stability::cuda

// What CUDA can offer this process: whether the backend was compiled, the runtime and
// driver versions, and each visible GPU. Never fails: "no GPU" is an answer, with the
// reason (on the CPU-only build machines cudaGetDeviceCount returns error 35).
#ifndef STABILITY_OPS_CUDA_DEVICE_QUERY_H_
#define STABILITY_OPS_CUDA_DEVICE_QUERY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace stability::cuda {

struct CudaDevice {
  int index = 0;
  std::string name;              // "NVIDIA H100 80GB HBM3"
  int compute_major = 0;         // 9 for Hopper
  int compute_minor = 0;
  int64_t total_memory_bytes = 0;
  int multiprocessors = 0;
  bool kernel_ran = false;       // a test kernel launched and wrote its result back
};

struct CudaInfo {
  bool compiled = false;         // the CUDA backend is in this binary
  int runtime_version = 0;       // e.g. 13000 for CUDA 13.0
  int driver_version = 0;        // 0 when no driver is loaded
  std::vector<CudaDevice> devices;
  std::string unavailable_reason;  // why `devices` is empty, for users
};

CudaInfo QueryCuda();

// The number of visible GPUs (cudaGetDeviceCount: no context is created on any), 0 where
// there are none or CUDA was not built.
int CudaDeviceCount();

// One line for `stability info`: "CUDA 13.0 runtime: 1 GPU: NVIDIA H100 (sm_90, 79.1 GiB)"
// or "CUDA 13.0 runtime: no GPU (cudaGetDeviceCount: ...)".
std::string DescribeCuda(const CudaInfo& info);

}  // namespace stability::cuda

#endif  // STABILITY_OPS_CUDA_DEVICE_QUERY_H_

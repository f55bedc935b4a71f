// Device query over the CUDA runtime, plus one tiny kernel per device to prove code runs.
#include <cuda_runtime.h>

#include "absl/strings/str_format.h"
#include "stability/ops/cuda/device_query.h"

namespace stability::cuda {
namespace {

__global__ void WriteIndexKernel(int* out, int value) { out[threadIdx.x] = value + threadIdx.x; }

// Launches WriteIndexKernel on the current device and checks what came back.
bool RunTestKernel() {
  constexpr int kThreads = 32;
  int* device_buf = nullptr;
  if (cudaMalloc(&device_buf, kThreads * sizeof(int)) != cudaSuccess) return false;
  WriteIndexKernel<<<1, kThreads>>>(device_buf, 1000);
  int host[kThreads] = {};
  const bool copied = cudaMemcpy(host, device_buf, sizeof(host), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(device_buf);
  if (!copied) return false;
  for (int i = 0; i < kThreads; ++i)
    if (host[i] != 1000 + i) return false;
  return true;
}

}  // namespace

CudaInfo QueryCuda() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  int count = 0;
  // Any error means "no usable GPU": the code differs by machine (35, 100, 999 seen).
  if (cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess) {
    info.unavailable_reason = absl::StrFormat("cudaGetDeviceCount: error %d, %s",
                                              static_cast<int>(err), cudaGetErrorString(err));
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return info;
  }
  if (count == 0) {
    info.unavailable_reason = "cudaGetDeviceCount: 0 devices";
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDevice d;
    d.index = i;
    d.name = prop.name;
    d.compute_major = prop.major;
    d.compute_minor = prop.minor;
    d.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    d.multiprocessors = prop.multiProcessorCount;
    d.kernel_ran = cudaSetDevice(i) == cudaSuccess && RunTestKernel();
    info.devices.push_back(d);
  }
  return info;
}

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

}  // namespace stability::cuda

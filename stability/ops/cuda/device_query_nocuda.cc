// QueryCuda for builds without a CUDA toolkit (see tools/cuda.bzl).
#include "stability/ops/cuda/device_query.h"

namespace stability::cuda {

CudaInfo QueryCuda() {
  CudaInfo info;
  info.unavailable_reason = "this binary was built without a CUDA toolkit";
  return info;
}

int CudaDeviceCount() { return 0; }

}  // namespace stability::cuda

// RunWarpMmaProbe and RunCpAsyncProbe for builds without a CUDA toolkit (see tools/cuda.bzl).
#include "stability/ops/cuda/warp_mma_probe.h"

namespace stability::ops::cuda {

bool RunWarpMmaProbe(const std::vector<uint16_t>&, const std::vector<uint16_t>&, WarpMmaProbe*, std::string* why) {
  *why = "this binary was built without a CUDA toolkit";
  return false;
}

bool RunCpAsyncProbe(const std::vector<uint32_t>&, CpAsyncProbe*, std::string* why) {
  *why = "this binary was built without a CUDA toolkit";
  return false;
}

}  // namespace stability::ops::cuda

// Backend::StartKernelProfile / StopKernelProfile on the GPU: a CUDA event recorded on the
// default stream after each launch (STABILITY_CUDA_LAUNCHED, the matrix products, the
// copies), so that a launch's device time is the time between its event and the one before.
// Off, Mark is one branch; on, recording an event costs a few microseconds of host time.
#ifndef STABILITY_OPS_CUDA_INTERNAL_KERNEL_PROFILE_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_KERNEL_PROFILE_CUH_

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "stability/ops/backend.h"

namespace stability::ops::cuda::internal {

class KernelProfile {
 public:
  bool on() const { return on_; }
  void Start();                             // records the first event
  void Mark(const std::string& name);       // after a launch; names past kMaxMarks are counted as dropped
  std::vector<Backend::KernelTime> Stop();  // waits for the device, sums by name

 private:
  static constexpr size_t kMaxMarks = 1 << 15;  // a GPT-2 124M step issues ~1,500
  bool on_ = false;
  std::vector<cudaEvent_t> events_;  // created on first use, kept
  std::vector<std::string> names_;   // names_[i]: the launch that events_[i + 1] follows
  int64_t dropped_ = 0;
};

// The process's profile (one CUDA backend a process).
KernelProfile& Profile();

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_KERNEL_PROFILE_CUH_

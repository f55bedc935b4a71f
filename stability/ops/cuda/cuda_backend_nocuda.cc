// The CUDA backend's API in a build without a CUDA toolkit (--config=nocuda, or a machine
// without nvcc): every call explains that CUDA was not built.
#include "stability/ops/cuda/cuda_backend.h"

namespace stability::ops::cuda {

absl::StatusOr<Backend*> InitCudaBackend(int) {
  return absl::UnavailableError("this build has no CUDA (built without a CUDA toolkit); use --device=cpu");
}

absl::Status CublasStatus() { return absl::UnavailableError("this build has no CUDA"); }

}  // namespace stability::ops::cuda

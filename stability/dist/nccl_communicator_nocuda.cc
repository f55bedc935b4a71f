// MakeNcclCommunicator for builds without a CUDA toolkit (see tools/cuda.bzl).
#include "stability/dist/nccl_communicator.h"

namespace stability::dist {

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator*, int) {
  return absl::UnavailableError("this binary was built without CUDA, so without NCCL");
}

}  // namespace stability::dist

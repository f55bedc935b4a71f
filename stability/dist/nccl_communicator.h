// NCCL communicator for GPU ranks: one GPU per rank (the rank's local index on its node),
// bootstrapped through `bootstrap` (MPI): rank 0 creates the NCCL unique id and broadcasts
// it. AllReduceSum and Broadcast take DEVICE pointers and complete before returning.
// Without a CUDA build or a GPU, MakeNcclCommunicator returns Unavailable.
#ifndef STABILITY_DIST_NCCL_COMMUNICATOR_H_
#define STABILITY_DIST_NCCL_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "stability/dist/communicator.h"

namespace stability::dist {

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator* bootstrap, int local_rank);

}  // namespace stability::dist

#endif  // STABILITY_DIST_NCCL_COMMUNICATOR_H_

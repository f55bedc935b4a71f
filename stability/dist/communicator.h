// Communicator: the collective operations data-parallel training needs, with three
// implementations chosen at start-up:
//
//   single process   rank 0 of 1, every collective is the identity
//   MPI              CPU ranks (Open MPI); all-reduces in chunks (large messages are slow
//                    with the default algorithm)
//   NCCL             GPU ranks, one GPU per rank, bootstrapped through MPI (rank 0 makes
//                    the NCCL id and broadcasts it); nccl_communicator.cu
//
// FromEnvironment() picks MPI when the process was started by mpirun/mpiexec or srun
// (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK or SLURM_NTASKS with more than one task).
#ifndef STABILITY_DIST_COMMUNICATOR_H_
#define STABILITY_DIST_COMMUNICATOR_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace stability::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "single", "mpi", "nccl"
  // In place: x ← Σ over ranks of x (then divide for a mean).
  virtual absl::Status AllReduceSum(float* x, int64_t n) = 0;
  virtual absl::Status AllReduceSum(double* x, int64_t n) = 0;
  // In place: x ← the maximum over ranks of x.
  virtual absl::Status AllReduceMax(double* x, int64_t n) = 0;
  // recv[r·n, (r+1)·n) ← rank r's send[0, n), on every rank; send must not overlap recv.
  // (ZeRO-1 gathers the parameters each rank updated, and the moments for checkpoints.)
  virtual absl::Status AllGather(const float* send, int64_t n, float* recv) = 0;
  // Every rank gets rank `root`'s bytes.
  virtual absl::Status Broadcast(void* data, int64_t bytes, int root) = 0;
  virtual absl::Status Barrier() = 0;
  bool is_root() const { return rank() == 0; }
};

// Every rank's `piece` floats gathered to every rank in chunks of at most `chunk`, through
// caller-owned staging in the communicator's memory (host for MPI, the GPU for NCCL):
// send holds `chunk` floats, recv `chunk`·size. pack(off, len, send) puts this rank's
// elements [off, off + len) of its piece into send; unpack(off, len, recv) then finds rank
// r's elements [off, off + len) at recv + r·len.
template <typename Pack, typename Unpack>
absl::Status AllGatherInChunks(Communicator& comm, int64_t piece, int64_t chunk, float* send, float* recv, Pack pack,
                               Unpack unpack) {
  for (int64_t off = 0; off < piece; off += chunk) {
    const int64_t len = std::min(chunk, piece - off);
    pack(off, len, send);
    if (absl::Status s = comm.AllGather(send, len, recv); !s.ok()) return s;
    unpack(off, len, static_cast<const float*>(recv));
  }
  return absl::OkStatus();
}

std::unique_ptr<Communicator> MakeSingleProcessCommunicator();

// MPI_Init (once per process) and a communicator over MPI_COMM_WORLD.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator();

// The world size announced by a launcher (mpirun, srun), or 1.
int LauncherWorldSize();
// This process's index among the ranks on its node (which GPU it takes), or 0.
int LauncherLocalRank();

// MPI when a launcher started more than one rank, else single process.
absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromEnvironment();

}  // namespace stability::dist

#endif  // STABILITY_DIST_COMMUNICATOR_H_

#include <cuda_runtime.h>
#include <nccl.h>

#include "absl/strings/str_cat.h"
#include "stability/dist/nccl_communicator.h"

namespace stability::dist {
namespace {

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, " failed: ", ncclGetErrorString(r)));
}

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, " failed: ", cudaGetErrorString(e)));
}

class Nccl final : public Communicator {
 public:
  Nccl(ncclComm_t comm, cudaStream_t stream, int rank, int size) : comm_(comm), stream_(stream), rank_(rank), size_(size) {}
  ~Nccl() override {
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  absl::Status AllReduceSum(float* x, int64_t n) override { return Reduce(x, n, ncclFloat32); }
  absl::Status AllReduceSum(double* x, int64_t n) override { return Reduce(x, n, ncclFloat64); }
  absl::Status AllReduceMax(double* x, int64_t n) override { return Reduce(x, n, ncclFloat64, ncclMax); }
  // Device buffers, one GPU per rank (as every NCCL collective here).
  absl::Status AllGather(const float* send, int64_t n, float* recv) override {
    if (absl::Status s = NcclStatus(ncclAllGather(send, recv, n, ncclFloat32, comm_, stream_), "ncclAllGather");
        !s.ok()) {
      return s;
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  absl::Status Broadcast(void* data, int64_t bytes, int root) override {
    if (absl::Status s = NcclStatus(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
        !s.ok()) {
      return s;
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  absl::Status Barrier() override {
    float* one = nullptr;
    if (absl::Status s = CudaStatus(cudaMallocAsync(&one, sizeof(float), stream_), "cudaMallocAsync"); !s.ok()) return s;
    absl::Status s = Reduce(one, 1, ncclFloat32);
    cudaFreeAsync(one, stream_);
    return s;
  }

 private:
  absl::Status Reduce(void* x, int64_t n, ncclDataType_t type, ncclRedOp_t op = ncclSum) {
    if (absl::Status s = NcclStatus(ncclAllReduce(x, x, n, type, op, comm_, stream_), "ncclAllReduce"); !s.ok()) {
      return s;
    }
    return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_, size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(Communicator* bootstrap, int local_rank) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return absl::UnavailableError("NCCL needs a GPU per rank; none is visible");
  }
  if (local_rank >= devices) {
    return absl::UnavailableError(absl::StrCat("rank ", bootstrap->rank(), " is local rank ", local_rank, " but only ",
                                               devices, " GPU(s) are visible on its node"));
  }
  if (absl::Status s = CudaStatus(cudaSetDevice(local_rank), "cudaSetDevice"); !s.ok()) return s;
  ncclUniqueId id;
  if (bootstrap->is_root()) {
    if (absl::Status s = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"); !s.ok()) return s;
  }
  if (absl::Status s = bootstrap->Broadcast(&id, sizeof(id), 0); !s.ok()) return s;
  ncclComm_t comm;
  if (absl::Status s = NcclStatus(ncclCommInitRank(&comm, bootstrap->size(), id, bootstrap->rank()), "ncclCommInitRank");
      !s.ok()) {
    return s;
  }
  cudaStream_t stream;
  if (absl::Status s = CudaStatus(cudaStreamCreate(&stream), "cudaStreamCreate"); !s.ok()) {
    ncclCommDestroy(comm);
    return s;
  }
  return std::unique_ptr<Communicator>(new Nccl(comm, stream, bootstrap->rank(), bootstrap->size()));
}

}  // namespace stability::dist

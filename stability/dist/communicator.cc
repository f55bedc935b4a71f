#include "stability/dist/communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace stability::dist {
namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  absl::Status AllReduceSum(float*, int64_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(double*, int64_t) override { return absl::OkStatus(); }
  absl::Status AllReduceMax(double*, int64_t) override { return absl::OkStatus(); }
  absl::Status AllGather(const float* send, int64_t n, float* recv) override {
    std::memcpy(recv, send, n * sizeof(float));
    return absl::OkStatus();
  }
  absl::Status Broadcast(void*, int64_t, int) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

absl::Status MpiError(int code, const char* what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  return absl::UnavailableError(absl::StrCat(what, " failed: ", std::string(msg, len)));
}

class Mpi final : public Communicator {
 public:
  Mpi() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~Mpi() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  // Chunks of 4 MiB: Open MPI's default allreduce is slow on messages over ~16 MB.
  absl::Status AllReduceSum(float* x, int64_t n) override { return Chunked(x, n, MPI_FLOAT); }
  absl::Status AllReduceSum(double* x, int64_t n) override { return Chunked(x, n, MPI_DOUBLE); }
  absl::Status AllReduceMax(double* x, int64_t n) override { return Chunked(x, n, MPI_DOUBLE, MPI_MAX); }

  // In chunks too: each chunk gathers into a staging buffer, then to its place per rank.
  absl::Status AllGather(const float* send, int64_t n, float* recv) override {
    const int64_t per = kChunkBytes / sizeof(float);
    // Kept between calls: ZeRO-1 gathers every step, and a fresh 4 MiB × ranks buffer
    // would be mapped and faulted in each time.
    if (static_cast<int64_t>(staging_.size()) < std::min(per, n) * size_) staging_.resize(std::min(per, n) * size_);
    std::vector<float>& staging = staging_;
    for (int64_t off = 0; off < n; off += per) {
      const int count = static_cast<int>(std::min(per, n - off));
      if (absl::Status s = MpiError(MPI_Allgather(send + off, count, MPI_FLOAT, staging.data(), count, MPI_FLOAT,
                                                  MPI_COMM_WORLD),
                                    "MPI_Allgather");
          !s.ok()) {
        return s;
      }
      for (int r = 0; r < size_; ++r)
        std::memcpy(recv + r * n + off, staging.data() + static_cast<int64_t>(r) * count, count * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, int64_t bytes, int root) override {
    char* p = static_cast<char*>(data);
    for (int64_t off = 0; off < bytes; off += kChunkBytes) {
      const int count = static_cast<int>(std::min<int64_t>(kChunkBytes, bytes - off));
      if (absl::Status s = MpiError(MPI_Bcast(p + off, count, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast"); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return MpiError(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

 private:
  static constexpr int64_t kChunkBytes = 4 << 20;
  template <typename T>
  absl::Status Chunked(T* x, int64_t n, MPI_Datatype type, MPI_Op op = MPI_SUM) {
    const int64_t per = kChunkBytes / sizeof(T);
    for (int64_t off = 0; off < n; off += per) {
      const int count = static_cast<int>(std::min(per, n - off));
      if (absl::Status s = MpiError(MPI_Allreduce(MPI_IN_PLACE, x + off, count, type, op, MPI_COMM_WORLD),
                                    "MPI_Allreduce");
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
  int rank_ = 0, size_ = 1;
  std::vector<float> staging_;  // AllGather's
};

int EnvInt(const char* name) {
  const char* v = std::getenv(name);
  int x = 0;
  return v != nullptr && absl::SimpleAtoi(v, &x) ? x : 0;
}

}  // namespace

std::unique_ptr<Communicator> MakeSingleProcessCommunicator() { return std::make_unique<SingleProcess>(); }

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    if (absl::Status s = MpiError(MPI_Init(nullptr, nullptr), "MPI_Init"); !s.ok()) return s;
  }
  // Errors come back as codes (and then as statuses) instead of aborting the process.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return std::unique_ptr<Communicator>(new Mpi);
}

int LauncherWorldSize() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"}) {
    if (int n = EnvInt(v); n > 0) return n;
  }
  return 1;
}

int LauncherLocalRank() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"}) {
    if (const char* s = std::getenv(v); s != nullptr) return EnvInt(v);
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorFromEnvironment() {
  if (LauncherWorldSize() > 1) return MakeMpiCommunicator();
  return MakeSingleProcessCommunicator();
}

}  // namespace stability::dist

// The GPU check's NCCL smoke test: a communicator of size 1 all-reduces and all-gathers a
// device buffer.
// Skipped where there is no GPU (CI, the developers' machines).
#include "stability/dist/nccl_communicator.h"

#include <vector>

#include "gtest/gtest.h"

#ifdef STABILITY_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace stability::dist {
namespace {

TEST(NcclCommunicatorTest, SizeOneAllReduceOnTheGpu) {
  int gpus = 0;
#ifdef STABILITY_HAS_CUDA
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
#endif
  auto single = MakeSingleProcessCommunicator();
  absl::StatusOr<std::unique_ptr<Communicator>> nccl = MakeNcclCommunicator(single.get(), 0);
  if (gpus == 0) {
    EXPECT_FALSE(nccl.ok());
    GTEST_SKIP() << "no GPU (" << nccl.status() << ")";
  }
#ifdef STABILITY_HAS_CUDA
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  EXPECT_EQ((*nccl)->size(), 1);
  EXPECT_EQ((*nccl)->name(), "nccl");
  std::vector<float> host = {1, 2, 3, 4};
  float* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, sizeof(float) * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device, host.data(), sizeof(float) * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE((*nccl)->AllReduceSum(device, 4).ok());
  std::vector<float> back(4);
  ASSERT_EQ(cudaMemcpy(back.data(), device, sizeof(float) * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, host);  // the sum over one rank is the buffer itself
  float* gathered = nullptr;  // ZeRO-1's collective: rank r's piece at r·n (here r = 0)
  ASSERT_EQ(cudaMalloc(&gathered, sizeof(float) * 4), cudaSuccess);
  ASSERT_TRUE((*nccl)->AllGather(device, 4, gathered).ok());
  ASSERT_EQ(cudaMemcpy(back.data(), gathered, sizeof(float) * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(gathered);
  EXPECT_EQ(back, host);
  cudaFree(device);
  EXPECT_TRUE((*nccl)->Barrier().ok());
#endif
}

}  // namespace
}  // namespace stability::dist

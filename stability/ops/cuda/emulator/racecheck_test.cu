// The race checker (racecheck.cc) aborts on the races compute-sanitizer's racecheck reports
// and stays quiet where a barrier orders the accesses: each kernel below is one case. Built
// with instrument = "racecheck", so this file's kernels are instrumented as the backend's are.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <vector>

#include "gtest/gtest.h"

namespace {

float* Zeros(size_t n) {
  float* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, n * sizeof(float)), cudaSuccess);
  cudaMemset(d, 0, n * sizeof(float));
  return d;
}

// Each thread reads its neighbour's slot: ordered by the barrier, or not.
__global__ void NeighbourKernel(float* out, bool barrier) {
  __shared__ float slot[64];
  slot[threadIdx.x] = threadIdx.x;
  if (barrier) __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = slot[(threadIdx.x + 1) % 64];
}

TEST(RacecheckTest, ABarrierOrdersSharedMemory) {
  float* out = Zeros(128);
  NeighbourKernel<<<2, 64>>>(out, true);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(out);
}

TEST(RacecheckDeathTest, SharedMemoryReadWithoutABarrier) {
  float* out = Zeros(128);
  EXPECT_DEATH((NeighbourKernel<<<2, 64>>>(out, false)),
               "kernel NeighbourKernel, block \\(0, 0, 0\\), thread \\([0-9]+, 0, 0\\): a race on shared memory .*"
               "(write and the read|read and the write) of thread \\([0-9]+, 0, 0\\) of block \\(0, 0, 0\\) with no "
               "barrier");
  cudaFree(out);
}

// Within a warp a __syncwarp (or a shuffle) orders the lanes; across warps it does not.
__global__ void WarpNeighbourKernel(float* out, bool same_warp, bool syncwarp) {
  __shared__ float slot[64];
  slot[threadIdx.x] = threadIdx.x;
  if (syncwarp) __syncwarp();
  out[threadIdx.x] = slot[same_warp ? threadIdx.x / 32 * 32 + (threadIdx.x + 1) % 32 : (threadIdx.x + 32) % 64];
}

TEST(RacecheckTest, SyncwarpOrdersTheLanesOfAWarp) {
  float* out = Zeros(64);
  WarpNeighbourKernel<<<1, 64>>>(out, true, true);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(out);
}

TEST(RacecheckDeathTest, SyncwarpDoesNotOrderTwoWarps) {
  float* out = Zeros(64);
  EXPECT_DEATH((WarpNeighbourKernel<<<1, 64>>>(out, false, true)), "race on shared memory");
  cudaFree(out);
}

TEST(RacecheckDeathTest, LanesWithoutSyncwarpRace) {
  float* out = Zeros(64);
  EXPECT_DEATH((WarpNeighbourKernel<<<1, 64>>>(out, true, false)), "race on shared memory");
  cudaFree(out);
}

// Every block adds into the same element: blocks of one launch are not ordered.
__global__ void EveryBlockAddsKernel(float* out) {
  if (threadIdx.x == 0) out[0] += 1.0f;
}

TEST(RacecheckDeathTest, TwoBlocksWritingOneElementRace) {
  float* out = Zeros(1);
  EXPECT_DEATH((EveryBlockAddsKernel<<<2, 32>>>(out)), "race on device memory.*another block of the same launch");
  cudaFree(out);
}

TEST(RacecheckTest, LaunchesAreOrdered) {
  float* out = Zeros(1);
  EveryBlockAddsKernel<<<1, 32>>>(out);
  EveryBlockAddsKernel<<<1, 32>>>(out);
  float host = 0;
  cudaMemcpy(&host, out, sizeof(float), cudaMemcpyDeviceToHost);
  EXPECT_EQ(host, 2.0f);
  cudaFree(out);
}

// Adjacent bf16-sized values written by adjacent threads share no granule.
__global__ void HalfWordsKernel(unsigned short* out) { out[threadIdx.x] = threadIdx.x; }

TEST(RacecheckTest, AdjacentTwoByteValuesAreNotARace) {
  unsigned short* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, 64 * sizeof(unsigned short)), cudaSuccess);
  HalfWordsKernel<<<1, 64>>>(out);
  cudaFree(out);
}

// A WMMA tile read back by the warp before the stores of the other lanes are ordered.
__global__ void WmmaStoreReadKernel(float* tile, float* out, bool syncwarp) {
  using namespace nvcuda;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 1.0f);
  wmma::store_matrix_sync(tile, c, 16, wmma::mem_row_major);
  if (syncwarp) __syncwarp();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 256];
}

TEST(RacecheckTest, WmmaTileStoredThenSyncwarpThenRead) {
  float *tile = Zeros(256), *out = Zeros(32);
  WmmaStoreReadKernel<<<1, 32>>>(tile, out, true);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(tile);
  cudaFree(out);
}

TEST(RacecheckDeathTest, WmmaTileReadBeforeTheOtherLanesStoresAreOrdered) {
  float *tile = Zeros(256), *out = Zeros(32);
  EXPECT_DEATH((WmmaStoreReadKernel<<<1, 32>>>(tile, out, false)), "race on device memory");
  cudaFree(tile);
  cudaFree(out);
}

}  // namespace

namespace {

// Each lane writes its share of a bf16 tile, then the warp loads it as a WMMA operand.
__global__ void TileThenWmmaLoadKernel(__nv_bfloat16* tile, bool syncwarp) {
  using namespace nvcuda;
  for (int i = threadIdx.x; i < 256; i += 32) tile[i] = __float2bfloat16(1.0f);
  if (syncwarp) __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
  wmma::load_matrix_sync(a, tile, 16);
}

TEST(RacecheckTest, WmmaLoadAfterSyncwarp) {
  __nv_bfloat16* tile = nullptr;
  ASSERT_EQ(cudaMalloc(&tile, 256 * sizeof(__nv_bfloat16)), cudaSuccess);
  TileThenWmmaLoadKernel<<<1, 32>>>(tile, true);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(tile);
}

TEST(RacecheckDeathTest, WmmaLoadOfTheOtherLanesUnorderedStores) {
  __nv_bfloat16* tile = nullptr;
  ASSERT_EQ(cudaMalloc(&tile, 256 * sizeof(__nv_bfloat16)), cudaSuccess);
  EXPECT_DEATH((TileThenWmmaLoadKernel<<<1, 32>>>(tile, false)), "race on device memory");
  cudaFree(tile);
}

}  // namespace

namespace {

// Every thread reads the flag, then thread 0 overwrites it with no barrier between: a race
// whichever thread the emulator ran last (launches alternate their thread order; the
// one-thread launch before the second case flips it).
__global__ void ReadThenThreadZeroWritesKernel(float* out) {
  __shared__ float flag;
  if (threadIdx.x == 0) flag = 1.0f;
  __syncthreads();
  out[threadIdx.x] = flag;
  if (threadIdx.x == 0) flag = 2.0f;
}
__global__ void NothingKernel() {}

TEST(RacecheckDeathTest, AWriteAfterEveryThreadsReadRacesInEitherOrder) {
  float* out = Zeros(64);
  EXPECT_DEATH((ReadThenThreadZeroWritesKernel<<<1, 64>>>(out)), "race on shared memory");
  EXPECT_DEATH(
      {
        NothingKernel<<<1, 1>>>();
        ReadThenThreadZeroWritesKernel<<<1, 64>>>(out);
      },
      "race on shared memory");
  cudaFree(out);
}

}  // namespace

namespace {

// A shuffle exchanges values but orders no memory: a lane's store is not ordered before its
// neighbour's load by a shuffle between them (a __syncwarp would order it).
__global__ void StoreShuffleLoadKernel(float* out) {
  __shared__ float slot[32];
  slot[threadIdx.x] = threadIdx.x;
  const float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  out[threadIdx.x] = v * slot[(threadIdx.x + 1) % 32];
}

TEST(RacecheckDeathTest, AShuffleDoesNotOrderSharedMemory) {
  float* out = Zeros(32);
  EXPECT_DEATH((StoreShuffleLoadKernel<<<1, 32>>>(out)), "race on shared memory");
  cudaFree(out);
}

}  // namespace

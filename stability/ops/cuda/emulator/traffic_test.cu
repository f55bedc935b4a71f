// The traffic counter (traffic.h): each launch's device-memory sectors read and written,
// each counted once a launch, shared memory and stacks not at all, WMMA flops a warp's
// product once, and copies and sets as their arguments say. Built with instrument =
// "traffic", so this file's kernels are instrumented as the backend's are.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <vector>

#include "gtest/gtest.h"
#include "stability/ops/cuda/emulator/traffic.h"

namespace {

template <typename T>
T* Device(size_t n) {
  T* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, n * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemset(d, 0, n * sizeof(T)), cudaSuccess);
  return d;
}

__global__ void CopyKernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i];
}

TEST(TrafficTest, ACopyReadsAndWritesEachSectorItTouches) {
  const int n = 1001;  // 4,004 bytes: 126 sectors of 32 (cudaMalloc aligns to 256)
  float *x = Device<float>(n), *y = Device<float>(n);
  emu::StartTraffic();
  CopyKernel<<<4, 256>>>(x, y, n);
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].name, "CopyKernel");
  EXPECT_FALSE(work[0].library);
  EXPECT_EQ(work[0].bytes_read, 126 * 32);
  EXPECT_EQ(work[0].bytes_written, 126 * 32);
  EXPECT_EQ(work[0].flops, 0);
  cudaFree(x);
  cudaFree(y);
}

// Every thread reads x[0] (and its own y): x's first sector, once.
__global__ void BroadcastKernel(const float* x, float* y) { y[threadIdx.x] += x[0]; }

TEST(TrafficTest, ASectorIsCountedOnceALaunchAndAgainInTheNext) {
  float *x = Device<float>(64), *y = Device<float>(64);
  emu::StartTraffic();
  BroadcastKernel<<<1, 64>>>(x, y);
  BroadcastKernel<<<1, 64>>>(x, y);
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 2u);
  for (const emu::WorkTraffic& w : work) {
    EXPECT_EQ(w.bytes_read, 32 + 256);  // x[0]'s sector and y's eight
    EXPECT_EQ(w.bytes_written, 256);
  }
  cudaFree(x);
  cudaFree(y);
}

// Each thread writes a value that another reads back (as a norm's residual add normalises
// the sum it just stored): the write is traffic, the read back the L2's; a read before the
// write (z +=) is a read.
__global__ void WriteThenReadKernel(const float* x, float* y, float* z) {
  const int i = threadIdx.x;
  y[i] = x[i] * 2.0f;
  __syncthreads();
  z[i] += y[blockDim.x - 1 - i];
}

TEST(TrafficTest, ASectorReadAfterTheLaunchWroteItIsNotRead) {
  float *x = Device<float>(64), *y = Device<float>(64), *z = Device<float>(64);
  emu::StartTraffic();
  WriteThenReadKernel<<<1, 64>>>(x, y, z);
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].bytes_read, 256 + 256);  // x and z; not y
  EXPECT_EQ(work[0].bytes_written, 256 + 256);
  cudaFree(x);
  cudaFree(y);
  cudaFree(z);
}

// A block sum through shared memory: only x's reads and the one write are device traffic.
__global__ void SharedSumKernel(const float* x, float* out) {
  __shared__ float partial[128];
  float local[4];  // the thread's own stack
  for (int k = 0; k < 4; ++k) local[k] = x[threadIdx.x * 4 + k];
  partial[threadIdx.x] = local[0] + local[1] + local[2] + local[3];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (int k = 0; k < 128; ++k) s += partial[k];
    *out = s;
  }
}

TEST(TrafficTest, SharedMemoryAndStacksAreNotDeviceTraffic) {
  float *x = Device<float>(512), *out = Device<float>(1);
  emu::StartTraffic();
  SharedSumKernel<<<1, 128>>>(x, out);
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].bytes_read, 512 * 4);
  EXPECT_EQ(work[0].bytes_written, 32);
  cudaFree(x);
  cudaFree(out);
}

// Each warp: one 16×16×16 product on tiles loaded from device memory.
__global__ void WmmaKernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* d) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d + threadIdx.x / 32 * 256, acc, 16, wmma::mem_row_major);
}

TEST(TrafficTest, AWarpsWmmaProductCountsItsFlopsOnce) {
  __nv_bfloat16 *a = Device<__nv_bfloat16>(256), *b = Device<__nv_bfloat16>(256);
  float* d = Device<float>(3 * 256);
  emu::StartTraffic();
  WmmaKernel<<<1, 96>>>(a, b, d);  // three warps
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 1u);
  EXPECT_EQ(work[0].flops, 3 * 2 * 16 * 16 * 16);
  EXPECT_EQ(work[0].bytes_read, 2 * 256 * 2);  // both tiles, once
  EXPECT_EQ(work[0].bytes_written, 3 * 256 * 4);
  cudaFree(a);
  cudaFree(b);
  cudaFree(d);
}

TEST(TrafficTest, CopiesAndSetsCountWhatTheyMove) {
  float *x = Device<float>(100), *y = Device<float>(100);
  std::vector<float> host(100);
  emu::StartTraffic();
  cudaMemcpy(y, x, 400, cudaMemcpyDeviceToDevice);
  cudaMemset(y, 0, 400);
  cudaMemcpy(host.data(), y, 400, cudaMemcpyDeviceToHost);
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  ASSERT_EQ(work.size(), 3u);
  EXPECT_EQ(work[0].name, "cudaMemcpy device to device");
  EXPECT_EQ(work[0].bytes_read, 400);
  EXPECT_EQ(work[0].bytes_written, 400);
  EXPECT_EQ(work[1].name, "cudaMemset");
  EXPECT_EQ(work[1].bytes_written, 400);
  EXPECT_EQ(work[2].bytes_read, 400);
  for (const emu::WorkTraffic& w : work) EXPECT_TRUE(w.library);
  cudaFree(x);
  cudaFree(y);
}

TEST(TrafficTest, NothingIsCountedOutsideStartAndStop) {
  float *x = Device<float>(64), *y = Device<float>(64);
  CopyKernel<<<1, 64>>>(x, y, 64);
  emu::StartTraffic();
  const std::vector<emu::WorkTraffic> work = emu::StopTraffic();
  EXPECT_TRUE(work.empty());
  CopyKernel<<<1, 64>>>(x, y, 64);
  EXPECT_TRUE(emu::StopTraffic().empty());
  cudaFree(x);
  cudaFree(y);
}

}  // namespace

// The CUDA emulator runs kernels as the GPU would where a test can tell (barriers, shuffles,
// shared memory, WMMA, launch limits), and faults where the GPU's behaviour is undefined or
// a kernel is wrong: each check below fails if the emulator stops doing what it promises.
// Built like the backend (cuda_emulated_library), so this .cu file is rewritten too.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace {

template <typename T>
T* DeviceCopy(const std::vector<T>& host) {
  T* d = nullptr;
  EXPECT_EQ(cudaMalloc(&d, host.size() * sizeof(T)), cudaSuccess);
  cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <typename T>
std::vector<T> HostCopy(const T* d, size_t n) {
  std::vector<T> host(n);
  cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}

// Each block: thread i writes i·(block + 1) to shared memory; after the barrier thread 0 sums.
__global__ void BlockSumKernel(int* out) {
  __shared__ int part[256];
  part[threadIdx.x] = threadIdx.x * (blockIdx.x + 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int i = 0; i < blockDim.x; ++i) s += part[i];
    out[blockIdx.x] = s;
  }
}

TEST(EmulatorTest, BarriersOrderSharedMemoryWithinEachBlock) {
  int* out = DeviceCopy(std::vector<int>(3, 0));
  BlockSumKernel<<<3, 256>>>(out);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(HostCopy(out, 3), (std::vector<int>{32640, 65280, 97920}));  // 255·256/2 · (b + 1)
  cudaFree(out);
}

// The same without the barrier: thread i reads its neighbour's slot before the neighbour
// has run (threads run to their next barrier one after another), as a GPU may; what it
// reads then is garbage (shared memory is poisoned at each block's start).
__global__ void MissingBarrierKernel(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = 1;
  out[threadIdx.x] = slot[(threadIdx.x + 1) % 64];
}

// Launches alternate between first-to-last and last-to-first, so the race shows as two
// launches of the same kernel disagreeing.
TEST(EmulatorTest, AMissingBarrierReadsWhatTheOtherThreadHasNotWrittenYet) {
  int* out = DeviceCopy(std::vector<int>(64, 0));
  MissingBarrierKernel<<<1, 64>>>(out);
  const std::vector<int> first = HostCopy(out, 64);
  MissingBarrierKernel<<<1, 64>>>(out);
  const std::vector<int> second = HostCopy(out, 64);
  EXPECT_NE(first, second);
  // First to last, thread 0 reads garbage (thread 1 has not run) and thread 63 reads thread
  // 0's 1; last to first, the other way round. Which launch ran which way depends on how
  // many came before.
  EXPECT_NE(first[0] == 1, first[63] == 1);
  EXPECT_NE(second[0] == 1, second[63] == 1);
  EXPECT_NE(first[0] == 1, second[0] == 1);
  cudaFree(out);
}

// Butterfly sum across the warp, and __shfl_down_sync's edge (lanes past 31 keep their own).
__global__ void ShuffleKernel(float* sum, float* down) {
  float v = threadIdx.x;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  sum[threadIdx.x] = v;
  down[threadIdx.x] = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 4);
}

TEST(EmulatorTest, ShufflesExchangeAcrossTheWarp) {
  float* sum = DeviceCopy(std::vector<float>(64, 0.0f));
  float* down = DeviceCopy(std::vector<float>(64, 0.0f));
  ShuffleKernel<<<1, 64>>>(sum, down);
  const std::vector<float> s = HostCopy(sum, 64), d = HostCopy(down, 64);
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(s[i], i < 32 ? 496.0f : 1520.0f) << i;  // Σ of the warp's lane numbers
    EXPECT_EQ(d[i], i % 32 < 28 ? i + 4 : i) << i;
  }
  cudaFree(sum);
  cudaFree(down);
}

template <typename T>
__global__ void DeducedKernel(const T* x, T* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 2 * x[i];
}

TEST(EmulatorTest, TemplateKernelsDeduceTheirParametersAtLaunch) {
  const double* x = DeviceCopy(std::vector<double>{1, 2, 3});
  double* y = DeviceCopy(std::vector<double>(3, 0.0));
  DeducedKernel<<<1, 32>>>(x, y, 3);
  EXPECT_EQ(HostCopy(y, 3), (std::vector<double>{2, 4, 6}));
}

// One warp: D = A·B + C on 16 × 16 × 16 bf16 tiles, fp32 accumulation.
__global__ void WmmaKernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* d) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

TEST(EmulatorTest, WmmaMultipliesTiles) {
  std::vector<__nv_bfloat16> a(256), b(256);
  std::vector<float> af(256), bf(256);
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2bfloat16_rn((i % 7) - 3.0f), af[i] = (i % 7) - 3.0f;
    b[i] = __float2bfloat16_rn((i % 5) * 0.5f), bf[i] = (i % 5) * 0.5f;
  }
  float* d = DeviceCopy(std::vector<float>(256, 0.0f));
  WmmaKernel<<<1, 32>>>(DeviceCopy(a), DeviceCopy(b), d);
  const std::vector<float> got = HostCopy(d, 256);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      float want = 1.0f;
      for (int k = 0; k < 16; ++k) want += af[r * 16 + k] * bf[c * 16 + k];  // B column-major
      EXPECT_EQ(got[r * 16 + c], want) << r << ", " << c;
    }
  }
}

// Lanes whose fragments differ (lane-dependent fills: not what a kernel does, but what the
// emulator must still get right) each get their own product, not the first lane's.
__global__ void LaneFragmentsKernel(float* d) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(fa, __float2bfloat16_rn(threadIdx.x + 1.0f));
  wmma::fill_fragment(fb, __float2bfloat16_rn(1.0f));
  wmma::fill_fragment(acc, 0.0f);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);  // lane l stores elements l, l + 32, ...
}

TEST(EmulatorTest, WmmaLanesWithTheirOwnFragmentsGetTheirOwnProducts) {
  float* d = DeviceCopy(std::vector<float>(256, 0.0f));
  LaneFragmentsKernel<<<1, 32>>>(d);
  const std::vector<float> got = HostCopy(d, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(got[i], 16.0f * (i % 32 + 1)) << i;
}

__global__ void MisalignedWmmaKernel(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a + 8, 16);  // 16 bytes in: not 32-byte aligned
}

TEST(EmulatorDeathTest, WmmaPointersMustBe32ByteAligned) {
  const __nv_bfloat16* a = DeviceCopy(std::vector<__nv_bfloat16>(512));
  EXPECT_DEATH((MisalignedWmmaKernel<<<1, 32>>>(a)), "kernel MisalignedWmmaKernel.*32-byte aligned");
}

__global__ void ShuffleAfterExitKernel(float* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

TEST(EmulatorDeathTest, AFullWarpShuffleAfterALaneExitedFaults) {
  float* out = DeviceCopy(std::vector<float>(32, 0.0f));
  EXPECT_DEATH((ShuffleAfterExitKernel<<<1, 32>>>(out)), "lane of the warp has exited");
}

__global__ void DeadlockKernel() {
  if (threadIdx.x == 0) {
    __syncwarp();  // waits for lanes 1..31, which wait for it at __syncthreads
  } else {
    __syncthreads();
  }
}

TEST(EmulatorDeathTest, ABarrierSomeThreadsNeverReachIsReported) {
  EXPECT_DEATH((DeadlockKernel<<<1, 64>>>()), "no thread can go on");
}

__global__ void WritePastTheEndKernel(float* x, int n) { x[n + 1024] = 1.0f; }

TEST(EmulatorDeathTest, DeviceMemoryEndsAtAGuardPage) {
  float* x = DeviceCopy(std::vector<float>(100, 0.0f));
  EXPECT_DEATH((WritePastTheEndKernel<<<1, 1>>>(x, 100)), "");
}

// A cp.async copy issued and never waited for (what internal/cp_async.cuh's CpAsync records):
// it would land in shared memory that is another block's, or nobody's, by then.
__global__ void ExitWithACopyInFlightKernel(int* x) {
  __shared__ int slot[1];
  ::emu::RunningAsyncCopies().pending.push_back({slot, x, 4, 4, 0});
}

TEST(EmulatorDeathTest, AThreadMustWaitForItsAsyncCopies) {
  int* x = DeviceCopy(std::vector<int>(1, 0));
  EXPECT_DEATH((ExitWithACopyInFlightKernel<<<1, 1>>>(x)),
               "kernel ExitWithACopyInFlightKernel.*exited with cp.async copies it never waited for");
  cudaFree(x);
}

// The two halves of the block wait at different __syncthreads.
__global__ void DivergentBarrierKernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
    out[threadIdx.x] = 1;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2;
  }
}

TEST(EmulatorDeathTest, EveryThreadMustWaitAtTheSameSyncthreads) {
  int* out = DeviceCopy(std::vector<int>(64, 0));
  EXPECT_DEATH((DivergentBarrierKernel<<<1, 64>>>(out)),
               "kernel DivergentBarrierKernel.*__syncthreads at .*emulator_test.cu:[0-9]+ while other threads of the "
               "block wait at the one at .*emulator_test.cu:[0-9]+");
  cudaFree(out);
}

TEST(EmulatorTest, NewDeviceMemoryIsNaN) {
  float* x = nullptr;
  ASSERT_EQ(cudaMalloc(&x, 64 * sizeof(float)), cudaSuccess);
  for (float v : HostCopy(x, 64)) EXPECT_TRUE(std::isnan(v));
  cudaFree(x);
}

__global__ void DynamicSharedKernel(int* out, int n) {
  extern __shared__ __align__(16) int buffer[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) buffer[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = buffer[n - 1];
}

TEST(EmulatorTest, DynamicSharedMemoryOver48KbNeedsTheAttribute) {
  int* out = DeviceCopy(std::vector<int>{0});
  const int n = 20000;  // 80 KB
  DynamicSharedKernel<<<1, 128, n * sizeof(int)>>>(out, n);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // read once
  ASSERT_EQ(cudaFuncSetAttribute(DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n * sizeof(int)),
            cudaSuccess);
  DynamicSharedKernel<<<1, 128, n * sizeof(int)>>>(out, n);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(HostCopy(out, 1)[0], n - 1);
}

TEST(EmulatorTest, LaunchLimitsAreTheGpus) {
  BlockSumKernel<<<1, 2048>>>(nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  BlockSumKernel<<<0, 32>>>(nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
}

}  // namespace

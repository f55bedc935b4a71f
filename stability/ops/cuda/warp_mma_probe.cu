#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "stability/ops/cuda/internal/cp_async.cuh"
#include "stability/ops/cuda/internal/warp_mma.cuh"
#include "stability/ops/cuda/warp_mma_probe.h"

namespace stability::ops::cuda {
namespace {

using internal::LdMatrixX4;
using internal::LdMatrixX4Trans;
using internal::MmaBf16;

constexpr int kL = 24;  // A's rows in shared memory: 48 bytes apart (16-byte aligned, as ldmatrix's rows must be)

__global__ void WarpMmaProbeKernel(const uint16_t* a, const uint16_t* b, float* d, uint32_t* af_out, uint32_t* ldm,
                                   uint32_t* ldm_t) {
  __shared__ __align__(16) uint16_t tile[16 * kL];
  const int lane = threadIdx.x, g = lane / 4, q = lane % 4;
  for (int i = lane; i < 256; i += 32) tile[(i / 16) * kL + i % 16] = a[i];
  __syncwarp();
  const auto pair = [](uint16_t lo, uint16_t hi) { return uint32_t{lo} | uint32_t{hi} << 16; };
  const auto at = [&](int r, int c) { return a[r * 16 + c]; };
  const uint32_t af[4] = {pair(at(g, 2 * q), at(g, 2 * q + 1)), pair(at(g + 8, 2 * q), at(g + 8, 2 * q + 1)),
                          pair(at(g, 2 * q + 8), at(g, 2 * q + 9)), pair(at(g + 8, 2 * q + 8), at(g + 8, 2 * q + 9))};
  const auto bt = [&](int k, int n) { return b[n * 16 + k]; };
  const uint32_t bf[2] = {pair(bt(2 * q, g), bt(2 * q + 1, g)), pair(bt(2 * q + 8, g), bt(2 * q + 9, g))};
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  MmaBf16(acc, af, bf);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * q + i % 2] = acc[i];
  const auto* row =
      reinterpret_cast<const __nv_bfloat16*>(tile + ((lane / 8 % 2) * 8 + lane % 8) * kL + (lane / 16) * 8);
  uint32_t r[4];
  LdMatrixX4(r, row);
  for (int j = 0; j < 4; ++j) ldm[lane * 4 + j] = r[j];
  LdMatrixX4Trans(r, row);
  for (int j = 0; j < 4; ++j) ldm_t[lane * 4 + j] = r[j];
  for (int j = 0; j < 4; ++j) af_out[lane * 4 + j] = af[j];
}

__global__ void CpAsyncProbeKernel(const uint32_t* src, uint32_t* group0, uint32_t* word, uint32_t* zeros,
                                   uint32_t* early) {
  __shared__ __align__(16) uint32_t a[256], b[64], c[256];
  const int i = threadIdx.x, next = (i + 1) % 64;
  internal::CpAsync<16>(a + 4 * i, src + 4 * i, true);
  internal::CpAsyncCommit();
  internal::CpAsync<4>(b + i, src + i, true);
  internal::CpAsync<16>(c + 4 * i, src + 4 * i, false);
  internal::CpAsyncCommit();
  for (int j = 0; j < 4; ++j) early[4 * i + j] = a[4 * i + j];
  internal::CpAsyncWait<1>();
  __syncthreads();
  for (int j = 0; j < 4; ++j) group0[4 * i + j] = a[4 * next + j];
  internal::CpAsyncWait<0>();
  __syncthreads();
  word[i] = b[next];
  for (int j = 0; j < 4; ++j) zeros[4 * i + j] = c[4 * next + j];
}

template <typename T>
T* Device(size_t n, const T* from = nullptr) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) return nullptr;
  if (from) cudaMemcpy(p, from, n * sizeof(T), cudaMemcpyHostToDevice);
  return static_cast<T*>(p);
}

bool NoDevice(std::string* why) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) return false;
  *why = "no CUDA device";
  return true;
}

// n values of a probe's device output into *to; the copy's error.
template <typename T>
cudaError_t CopyBack(const T* from, size_t n, std::vector<T>* to) {
  to->resize(n);
  return cudaMemcpy(to->data(), from, n * sizeof(T), cudaMemcpyDeviceToHost);
}

}  // namespace

bool RunWarpMmaProbe(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, WarpMmaProbe* out,
                     std::string* why) {
  if (NoDevice(why)) return false;
  uint16_t *da = Device(a.size(), a.data()), *db = Device(b.size(), b.data());
  float* dd = Device<float>(128);
  uint32_t *daf = Device<uint32_t>(128), *dl = Device<uint32_t>(128), *dlt = Device<uint32_t>(128);
  WarpMmaProbeKernel<<<1, 32>>>(da, db, dd, daf, dl, dlt);
  const cudaError_t launched = cudaGetLastError();
  CopyBack(dd, 128, &out->d);
  CopyBack(daf, 128, &out->a);
  CopyBack(dl, 128, &out->ldm);
  const cudaError_t copied = CopyBack(dlt, 128, &out->ldm_t);
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dd), static_cast<void*>(daf),
                  static_cast<void*>(dl), static_cast<void*>(dlt)}) {
    cudaFree(p);
  }
  if (launched != cudaSuccess || copied != cudaSuccess) {
    *why = cudaGetErrorString(launched != cudaSuccess ? launched : copied);
    return false;
  }
  return true;
}

bool RunCpAsyncProbe(const std::vector<uint32_t>& src, CpAsyncProbe* out, std::string* why) {
  if (NoDevice(why)) return false;
  uint32_t *dsrc = Device(src.size(), src.data()), *d0 = Device<uint32_t>(256), *dw = Device<uint32_t>(64),
           *dz = Device<uint32_t>(256), *de = Device<uint32_t>(256);
  CpAsyncProbeKernel<<<1, 64>>>(dsrc, d0, dw, dz, de);
  const cudaError_t launched = cudaGetLastError();
  CopyBack(d0, 256, &out->group0);
  CopyBack(dw, 64, &out->word);
  CopyBack(dz, 256, &out->zeros);
  const cudaError_t copied = CopyBack(de, 256, &out->early);
  for (uint32_t* p : {dsrc, d0, dw, dz, de}) cudaFree(p);
#if defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  out->emulated = true;
#endif
  if (launched != cudaSuccess || copied != cudaSuccess) {
    *why = cudaGetErrorString(launched != cudaSuccess ? launched : copied);
    return false;
  }
  return true;
}

}  // namespace stability::ops::cuda

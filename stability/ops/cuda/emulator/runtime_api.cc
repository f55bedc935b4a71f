// The CUDA runtime API calls the backend makes, on the emulated GPU (cuda_emulator.h): one
// device, "CUDA emulator (CPU)", whose memory is guarded host memory and whose work is done
// by the time each call returns (so streams, events and synchronisations are immediate).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>

#include "stability/ops/cuda/emulator/internal/guarded_memory.h"
#include "stability/ops/cuda/emulator/internal/instrumented.h"
#include "stability/ops/cuda/emulator/internal/scheduler.h"

// The events the kernel profile records: a host clock, as the work is already done.
struct CUevent_st {
  double ms = 0;
};

namespace {

// The emulated device's memory: what a test or a small model needs; the memory checks
// (CheckFits) see it like a GPU's.
constexpr size_t kTotalBytes = size_t{16} << 30;

// Every live event, as the CUDA runtime keeps them: events a program never destroys (the
// kernel profile keeps its own for the process's life) stay reachable, not leaked.
std::set<cudaEvent_t>& Events() {
  static auto* events = new std::set<cudaEvent_t>;
  return *events;
}

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

namespace emu {
void LibraryWork(const char* what, double bytes_read, double bytes_written, double flops) {
  if (internal::OnLibraryWork != nullptr) internal::OnLibraryWork(what, bytes_read, bytes_written, flops);
}
}  // namespace emu

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "CUDA emulator (CPU)");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->totalGlobalMem = kTotalBytes;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 227 * 1024;
  prop->maxThreadsPerBlock = 1024;
  prop->warpSize = 32;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

cudaError_t cudaGetLastError() { return emu::internal::TakeLastError(); }
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidDevicePointer:
      return "invalid device pointer";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    default:
      return "unknown error (CUDA emulator)";
  }
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (emu::internal::GuardedBytesAlive() + bytes > kTotalBytes) return cudaErrorMemoryAllocation;
  *p = emu::internal::GuardedAlloc(bytes);
  if (*p != nullptr && emu::internal::WatchMemory != nullptr) emu::internal::WatchMemory(*p, bytes, false);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  if (emu::internal::UnwatchMemory != nullptr) emu::internal::UnwatchMemory(p);
  return emu::internal::GuardedFree(p) ? cudaSuccess : cudaErrorInvalidDevicePointer;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = kTotalBytes;
  *free_bytes = kTotalBytes - emu::internal::GuardedBytesAlive();
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes > 0) std::memmove(dst, src, bytes);
  const auto n = static_cast<double>(bytes);
  if (kind == cudaMemcpyDeviceToDevice) emu::LibraryWork("cudaMemcpy device to device", n, n, 0);
  if (kind == cudaMemcpyHostToDevice) emu::LibraryWork("cudaMemcpy host to device", 0, n, 0);
  if (kind == cudaMemcpyDeviceToHost) emu::LibraryWork("cudaMemcpy device to host", n, 0, 0);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes > 0) std::memset(p, value, bytes);
  emu::LibraryWork("cudaMemset", 0, static_cast<double>(bytes), 0);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) return emu::internal::SetMaxDynamicShared(kernel, value);
  return cudaSuccess;
}

// The blocks an SM holds at once by its thread and shared-memory limits (an H100's: 2,048
// threads, 32 blocks, 228 KB of which 1 KB a block is the runtime's). Registers, which often
// decide it on a GPU, are not modelled: the emulator's count is the most a GPU could hold.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int block_size,
                                                          size_t dynamic_shared) {
  if (blocks == nullptr || block_size <= 0 || block_size > 1024) return cudaErrorInvalidValue;
  int n = std::min(32, 2048 / block_size);
  n = std::min<int>(n, static_cast<int>((228 * 1024) / (dynamic_shared + 1024)));
  *blocks = n;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  Events().insert(*event);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (Events().erase(event) == 0) return cudaErrorInvalidResourceHandle;
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  event->ms = NowMs();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = static_cast<float>(end->ms - start->ms);
  return cudaSuccess;
}

}  // extern "C"

// What the emulated runtime API (runtime_api.cc) shares with the scheduler.
#ifndef STABILITY_OPS_CUDA_EMULATOR_INTERNAL_SCHEDULER_H_
#define STABILITY_OPS_CUDA_EMULATOR_INTERNAL_SCHEDULER_H_

#include <cuda_runtime_api.h>

namespace emu::internal {

// The last launch error, cleared (cudaGetLastError).
cudaError_t TakeLastError();
// cudaFuncAttributeMaxDynamicSharedMemorySize for one kernel.
cudaError_t SetMaxDynamicShared(const void* kernel, int bytes);

}  // namespace emu::internal

#endif  // STABILITY_OPS_CUDA_EMULATOR_INTERNAL_SCHEDULER_H_

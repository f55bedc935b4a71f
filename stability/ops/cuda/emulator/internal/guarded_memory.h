// Host memory that behaves like the GPU's where a kernel could tell: each block ends at an
// inaccessible page (a read or write past the end faults at once, as compute-sanitizer
// would report it) and starts filled with NaN bytes (cudaMalloc's memory is not zero).
#ifndef STABILITY_OPS_CUDA_EMULATOR_INTERNAL_GUARDED_MEMORY_H_
#define STABILITY_OPS_CUDA_EMULATOR_INTERNAL_GUARDED_MEMORY_H_

#include <cstddef>

namespace emu::internal {

// `bytes` (≥ 1) ending 256-byte aligned at a guard page; nullptr when the host is out of
// memory. The start is 256-byte aligned, as cudaMalloc's.
void* GuardedAlloc(size_t bytes);
// Frees what GuardedAlloc returned; false for any other pointer.
bool GuardedFree(void* p);
// Bytes of every live block.
size_t GuardedBytesAlive();

}  // namespace emu::internal

#endif  // STABILITY_OPS_CUDA_EMULATOR_INTERNAL_GUARDED_MEMORY_H_

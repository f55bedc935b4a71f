// What the runtimes of instrumented builds (racecheck.cc: races; traffic.cc: memory traffic)
// need from the scheduler and the runtime API: who is accessing memory, which memory to
// watch, where a launch ends, and the device work done outside kernels.
#ifndef STABILITY_OPS_CUDA_EMULATOR_INTERNAL_INSTRUMENTED_H_
#define STABILITY_OPS_CUDA_EMULATOR_INTERNAL_INSTRUMENTED_H_

#include <cstddef>
#include <cstdint>

namespace emu::internal {

// The running thread, kept by the scheduler at every switch (in_kernel false between launches).
struct Accessor {
  bool in_kernel = false;
  uint32_t launch = 0;                    // the launch's number, from 1
  uint64_t block = 0;                     // linear block index in the grid
  int thread = 0;                         // linear thread index in the block
  const uint32_t* block_epoch = nullptr;  // __syncthreads this thread has passed
  const uint32_t* warp_epoch = nullptr;   // __syncwarp barriers it has passed (not shuffles)
  uintptr_t stack = 0;                    // its stack: [stack, stack + stack_bytes), never shared
  size_t stack_bytes = 0;
};
extern Accessor accessor;

// Whether an access at p is the running thread's own stack (never shared, never device memory).
inline bool OnOwnStack(uintptr_t p) { return p - accessor.stack < accessor.stack_bytes; }

// Every load and store the instrumented code makes (GCC's -fsanitize=thread calls, forwarded
// by tsan_entry_points.cc), inside kernels and out: defined by the build's runtime.
void OnAccess(const void* p, size_t bytes, bool write);

// The hooks below are weak: null where no runtime that wants them is linked.
// Memory to watch: device allocations (shared = false: every block of a launch sees it) and
// shared memory (each block its own).
void WatchMemory(const void* p, size_t bytes, bool shared) __attribute__((weak));
void UnwatchMemory(const void* p) __attribute__((weak));
// A launch has run every block (kernel: its name).
void OnLaunchEnd(const char* kernel) __attribute__((weak));
// Device work outside kernels (cuBLAS products, copies, sets): what it reads and writes of
// device memory, and its tensor-core flops.
void OnLibraryWork(const char* what, double bytes_read, double bytes_written, double flops) __attribute__((weak));

}  // namespace emu::internal

#endif  // STABILITY_OPS_CUDA_EMULATOR_INTERNAL_INSTRUMENTED_H_

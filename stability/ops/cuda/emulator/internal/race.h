// What the race checker (racecheck.cc, linked only into racecheck builds) needs from the
// scheduler and the runtime: who is accessing memory, and which memory to watch.
#ifndef STABILITY_OPS_CUDA_EMULATOR_INTERNAL_RACE_H_
#define STABILITY_OPS_CUDA_EMULATOR_INTERNAL_RACE_H_

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

// Memory the checker watches: device allocations (shared = false: every block of a launch
// sees it) and shared memory (each block its own). Weak: null where racecheck.cc is not linked.
void RaceTrack(const void* p, size_t bytes, bool shared) __attribute__((weak));
void RaceUntrack(const void* p) __attribute__((weak));

}  // namespace emu::internal

#endif  // STABILITY_OPS_CUDA_EMULATOR_INTERNAL_RACE_H_

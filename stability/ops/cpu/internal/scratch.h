// Per-thread scratch buffers that grow and are kept: a kernel's large temporaries (the
// attention's T×T tiles, a capped 50k-wide logit row) cost no allocation, and no page
// faults, after the first training step. Each kernel uses its own slots.
#ifndef STABILITY_OPS_CPU_INTERNAL_SCRATCH_H_
#define STABILITY_OPS_CPU_INTERNAL_SCRATCH_H_

#include <cstdint>
#include <vector>

namespace stability::ops::cpu::internal {

enum ScratchSlot { kAttentionTile0, kAttentionTile1, kCappedLogits, kScratchSlots };

// At least n floats, contents unspecified; valid until this thread asks for the slot again.
inline float* ThreadScratch(ScratchSlot slot, int64_t n) {
  thread_local std::vector<float> buffers[kScratchSlots];
  std::vector<float>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

}  // namespace stability::ops::cpu::internal

#endif  // STABILITY_OPS_CPU_INTERNAL_SCRATCH_H_

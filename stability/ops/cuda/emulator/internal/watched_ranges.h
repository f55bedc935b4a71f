// The memory an instrumented build's runtime watches (racecheck.cc, traffic.cc): ranges of
// device or shared memory, each with a shadow array of `Shadow` (zeroed, mapped lazily: one
// entry per `kGranule` bytes from the range's first granule), found by address.
#ifndef STABILITY_OPS_CUDA_EMULATOR_INTERNAL_WATCHED_RANGES_H_
#define STABILITY_OPS_CUDA_EMULATOR_INTERNAL_WATCHED_RANGES_H_

#include <sys/mman.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>

#include "stability/ops/cuda/emulator/cuda_emulator.h"

namespace emu::internal {

template <typename Shadow, size_t kGranule>
class WatchedRanges {
 public:
  struct Range {
    uintptr_t begin;
    size_t bytes;
    bool shared;
    Shadow* shadow;
    size_t shadow_bytes;
    // The shadow of the granule holding byte x of the range.
    Shadow& At(uintptr_t x) const { return shadow[x / kGranule - begin / kGranule]; }
  };

  void Add(const void* p, size_t bytes, bool shared) {
    const auto begin = reinterpret_cast<uintptr_t>(p);
    Range r{begin, bytes, shared, nullptr, 0};
    r.shadow_bytes = ((begin + bytes + kGranule - 1) / kGranule - begin / kGranule) * sizeof(Shadow);
    void* m = mmap(nullptr, r.shadow_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) Fault("no address space for the shadow of watched memory (race checker or traffic counter)");
    r.shadow = static_cast<Shadow*>(m);
    recent_.fill(nullptr);
    ranges_[begin] = r;
  }

  void Remove(const void* p) {
    auto it = ranges_.find(reinterpret_cast<uintptr_t>(p));
    if (it == ranges_.end()) return;
    munmap(it->second.shadow, it->second.shadow_bytes);
    ranges_.erase(it);
    recent_.fill(nullptr);
  }

  // The range holding x, or null. A kernel streams through a few buffers at a time (AdamW:
  // seven), so the last few ranges found are tried first.
  const Range* Find(uintptr_t x) {
    for (const Range* r : recent_) {
      if (r != nullptr && x - r->begin < r->bytes) return r;
    }
    auto it = ranges_.upper_bound(x);
    if (it == ranges_.begin()) return nullptr;
    --it;
    if (x - it->second.begin >= it->second.bytes) return nullptr;
    for (size_t i = recent_.size() - 1; i > 0; --i) recent_[i] = recent_[i - 1];
    recent_[0] = &it->second;
    return recent_[0];
  }

 private:
  std::map<uintptr_t, Range> ranges_;
  std::array<const Range*, 8> recent_{};
};

}  // namespace emu::internal

#endif  // STABILITY_OPS_CUDA_EMULATOR_INTERNAL_WATCHED_RANGES_H_

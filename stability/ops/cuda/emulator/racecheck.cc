// The emulator's race checker, for kernels compiled with -fsanitize=thread (racecheck builds:
// tools/cuda_emulator.bzl, instrument = "racecheck"). GCC's ThreadSanitizer instrumentation
// calls __tsan_readN / __tsan_writeN before every load and store the optimiser keeps
// (tsan_entry_points.cc); this file is the runtime those calls land in — not TSan's, which
// knows nothing of blocks and barriers — and checks
// them against the CUDA memory model the way compute-sanitizer's racecheck does:
//
//   Two accesses to the same bytes in one launch, at least one a write, from different
//   threads, race unless a barrier orders them: both threads in one block with a
//   __syncthreads between them, or both in one warp with a __syncwarp between (a shuffle
//   exchanges values but, by the CUDA guide, orders no memory).
//   Threads of different blocks are never ordered within a launch (device memory); shared
//   memory is each block's own.
//
// The emulator runs a block's threads one after another between barriers, so a racy kernel
// usually still gives the right answer here (and often on a GPU); this makes it fail. Each
// 2-byte granule of watched memory (every cudaMalloc block, dynamic and static shared
// memory) keeps its last write and its last reads by two threads: the launch, block, thread
// and the thread's barrier counts. The first race aborts, naming both accesses. Cost: one
// call per access, 48 bytes of shadow per 2 bytes watched (mapped lazily), about 3× the
// emulated time.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "stability/ops/cuda/emulator/cuda_emulator.h"
#include "stability/ops/cuda/emulator/internal/instrumented.h"
#include "stability/ops/cuda/emulator/internal/watched_ranges.h"

namespace emu::internal {
namespace {

constexpr size_t kGranule = 2;  // bf16 stores of adjacent threads share no granule

struct Access {
  uint32_t launch;  // 0: none
  uint32_t block;   // linear block (mod 2^32)
  uint16_t thread;
  uint16_t block_epoch;  // mod 2^16
  uint16_t warp_epoch;
  uint16_t unused;
};
// The last write, the last read, and the last read by another thread than that one: a write
// races with every earlier read no barrier orders, and with two reads kept it sees one from
// another thread whichever order the emulator ran them in (one would miss "all read, then
// thread 0 writes" when thread 0 happened to read last).
struct Granule {
  Access write, read, other_read;
};

using Ranges = WatchedRanges<Granule, kGranule>;
using Range = Ranges::Range;
Ranges& Watched() {
  static auto* ranges = new Ranges;
  return *ranges;
}

std::string Where(const Access& a) {
  const dim3 g = coords.grid_dim, b = coords.block_dim;
  char s[160];
  std::snprintf(s, sizeof(s), "thread (%u, %u, %u) of block (%u, %u, %u)", a.thread % b.x, a.thread / b.x % b.y,
                a.thread / (b.x * b.y), a.block % g.x, a.block / g.x % g.y, a.block / (g.x * g.y));
  return s;
}

[[noreturn]] void Report(const Range& r, uintptr_t x, bool write, const Access& prev, bool prev_write) {
  std::string what = std::string("a race on ") + (r.shared ? "shared" : "device") + " memory (byte " +
                     std::to_string(x - r.begin) + " of " + std::to_string(r.bytes) + " bytes " +
                     (r.shared ? "of shared memory" : "allocated") + "): this thread's " + (write ? "write" : "read") +
                     " and the " + (prev_write ? "write" : "read") + " of " + Where(prev) +
                     (prev.block == static_cast<uint32_t>(accessor.block)
                          ? " with no barrier between (__syncthreads, or __syncwarp within a warp)"
                          : ", another block of the same launch (blocks are not ordered)");
  Fault(what.c_str());
}

bool SameThread(const Access& a, const Access& b) {
  return a.launch == b.launch && a.block == b.block && a.thread == b.thread;
}

// Whether `prev` and the running thread's access are unordered.
bool Unordered(const Range& r, const Access& prev, const Access& now) {
  if (prev.launch != now.launch) return false;
  if (prev.block != now.block) return !r.shared;
  if (prev.thread == now.thread || prev.block_epoch != now.block_epoch) return false;
  return prev.thread / 32 != now.thread / 32 || prev.warp_epoch == now.warp_epoch;
}

}  // namespace

void OnAccess(const void* p, size_t n, bool write) {
  if (!accessor.in_kernel) return;
  const auto x = reinterpret_cast<uintptr_t>(p);
  if (OnOwnStack(x)) return;
  const Range* r = Watched().Find(x);
  if (r == nullptr) return;
  const Access now{accessor.launch,
                   static_cast<uint32_t>(accessor.block),
                   static_cast<uint16_t>(accessor.thread),
                   static_cast<uint16_t>(*accessor.block_epoch),
                   static_cast<uint16_t>(*accessor.warp_epoch),
                   0};
  const size_t end = std::min(x + n - r->begin, r->bytes);
  for (size_t g = (x - r->begin) / kGranule; g * kGranule < end; ++g) {
    Granule& s = r->At(r->begin + g * kGranule);
    if (Unordered(*r, s.write, now)) Report(*r, x, write, s.write, true);
    if (write) {
      if (Unordered(*r, s.read, now)) Report(*r, x, write, s.read, false);
      if (Unordered(*r, s.other_read, now)) Report(*r, x, write, s.other_read, false);
      s.write = now;
    } else {
      if (!SameThread(s.read, now)) s.other_read = s.read;
      s.read = now;
    }
  }
}

void WatchMemory(const void* p, size_t bytes, bool shared) { Watched().Add(p, bytes, shared); }

void UnwatchMemory(const void* p) { Watched().Remove(p); }

}  // namespace emu::internal

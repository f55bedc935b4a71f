// The emulator's memory-traffic counter, the runtime of traffic builds (instrument =
// "traffic"; traffic.h says what is counted). Every load and store of an instrumented kernel
// comes here (tsan_entry_points.cc); each 32-byte sector of device memory keeps the last
// launch that read it and the last that wrote it, so a launch counts each sector it touches
// once however many of its threads touch it. Shared memory and the threads' stacks are not
// device memory and are not counted.
#include "stability/ops/cuda/emulator/traffic.h"

#include <algorithm>
#include <cstdint>

#include "stability/ops/cuda/emulator/cuda_emulator.h"
#include "stability/ops/cuda/emulator/internal/instrumented.h"
#include "stability/ops/cuda/emulator/internal/watched_ranges.h"

namespace emu {
namespace internal {
namespace {

constexpr uintptr_t kSector = 32;  // DRAM's access granularity

struct Sector {
  uint32_t read = 0, written = 0;  // the launches that last did (0: none)
};
using Ranges = WatchedRanges<Sector, kSector>;
Ranges& Watched() {
  static auto* ranges = new Ranges;
  return *ranges;
}

bool counting = false;
std::vector<WorkTraffic>& Work() {
  static auto* work = new std::vector<WorkTraffic>;
  return *work;
}
uint64_t sectors_read = 0, sectors_written = 0;  // by the launch running

}  // namespace

void OnAccess(const void* p, size_t n, bool write) {
  if (!counting || !accessor.in_kernel || n == 0) return;
  const auto x = reinterpret_cast<uintptr_t>(p);
  if (OnOwnStack(x)) return;
  const Ranges::Range* r = Watched().Find(x);
  if (r == nullptr) return;
  const uintptr_t end = std::min(x + n, r->begin + r->bytes);
  for (uintptr_t s = x / kSector; s * kSector < end; ++s) {
    Sector& sector = r->At(s * kSector);
    // What this launch wrote and reads back is in the L2 (write-back): no DRAM read.
    if (!write && sector.written == accessor.launch) continue;
    uint32_t& stamp = write ? sector.written : sector.read;
    if (stamp == accessor.launch) continue;
    stamp = accessor.launch;
    ++(write ? sectors_written : sectors_read);
  }
}

void WatchMemory(const void* p, size_t bytes, bool shared) {
  if (!shared) Watched().Add(p, bytes, shared);
}

void UnwatchMemory(const void* p) { Watched().Remove(p); }

void OnLaunchEnd(const char* kernel) {
  if (counting) {
    Work().push_back({kernel, false, static_cast<double>(sectors_read * kSector),
                      static_cast<double>(sectors_written * kSector), static_cast<double>(tensor_core_flops)});
  }
  sectors_read = sectors_written = 0;
  tensor_core_flops = 0;
}

void OnLibraryWork(const char* what, double bytes_read, double bytes_written, double flops) {
  if (counting) Work().push_back({what, true, bytes_read, bytes_written, flops});
}

}  // namespace internal

void StartTraffic() {
  internal::Work().clear();
  internal::sectors_read = internal::sectors_written = 0;
  internal::tensor_core_flops = 0;
  internal::counting = true;
}

std::vector<WorkTraffic> StopTraffic() {
  internal::counting = false;
  std::vector<WorkTraffic> work;
  work.swap(internal::Work());
  return work;
}

}  // namespace emu

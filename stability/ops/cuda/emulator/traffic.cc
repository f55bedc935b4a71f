// The emulator's memory-traffic counter, the runtime of traffic builds (instrument =
// "traffic"; traffic.h says what is counted). Every load and store of an instrumented kernel
// comes here (tsan_entry_points.cc); each 32-byte sector of device memory keeps the last
// launch that read it and the last that wrote it, so a launch counts each sector it touches
// once however many of its threads touch it. Shared memory and the threads' stacks are not
// device memory and are not counted.
#include "stability/ops/cuda/emulator/traffic.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <map>

#include "stability/ops/cuda/emulator/cuda_emulator.h"
#include "stability/ops/cuda/emulator/internal/instrumented.h"

namespace emu {
namespace internal {
namespace {

constexpr uintptr_t kSector = 32;  // DRAM's access granularity

struct Sector {
  uint32_t read = 0, written = 0;  // the launches that last did (0: none)
};
struct Range {
  uintptr_t begin;
  size_t bytes;
  Sector* shadow;  // one a sector, from begin's sector
  size_t shadow_bytes;
};

std::map<uintptr_t, Range>& Ranges() {
  static auto* ranges = new std::map<uintptr_t, Range>;
  return *ranges;
}
const Range* last = nullptr;

const Range* Find(uintptr_t x) {
  if (last != nullptr && x - last->begin < last->bytes) return last;
  auto it = Ranges().upper_bound(x);
  if (it == Ranges().begin()) return nullptr;
  --it;
  if (x - it->second.begin >= it->second.bytes) return nullptr;
  last = &it->second;
  return last;
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
  const Range* r = Find(x);
  if (r == nullptr) return;
  const uintptr_t first = r->begin / kSector, end = std::min(x + n, r->begin + r->bytes);
  for (uintptr_t s = x / kSector; s * kSector < end; ++s) {
    Sector& sector = r->shadow[s - first];
    uint32_t& stamp = write ? sector.written : sector.read;
    if (stamp == accessor.launch) continue;
    stamp = accessor.launch;
    ++(write ? sectors_written : sectors_read);
  }
}

void WatchMemory(const void* p, size_t bytes, bool shared) {
  if (shared) return;
  const auto begin = reinterpret_cast<uintptr_t>(p);
  Range r{begin, bytes, nullptr, 0};
  r.shadow_bytes = ((begin + bytes + kSector - 1) / kSector - begin / kSector) * sizeof(Sector);
  void* m = mmap(nullptr, r.shadow_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) Fault("traffic: no address space for the shadow of an allocation");
  r.shadow = static_cast<Sector*>(m);
  last = nullptr;
  Ranges()[begin] = r;
}

void UnwatchMemory(const void* p) {
  auto it = Ranges().find(reinterpret_cast<uintptr_t>(p));
  if (it == Ranges().end()) return;
  munmap(it->second.shadow, it->second.shadow_bytes);
  Ranges().erase(it);
  last = nullptr;
}

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

#include "stability/ops/cuda/emulator/internal/guarded_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>

namespace emu::internal {
namespace {

struct Mapping {
  void* base;
  size_t mapped;  // bytes mapped, guard page included
  size_t bytes;   // bytes asked for
};

std::mutex& Mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<const void*, Mapping>& Live() {
  static auto* live = new std::map<const void*, Mapping>;
  return *live;
}
size_t alive_bytes = 0;

}  // namespace

void* GuardedAlloc(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (bytes + 255) / 256 * 256;
  const size_t open = (rounded + page - 1) / page * page;
  void* base = mmap(nullptr, open + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  unsigned char* guard = static_cast<unsigned char*>(base) + open;
  mprotect(guard, page, PROT_NONE);
  unsigned char* p = guard - rounded;
  std::memset(p, 0xff, rounded);  // every float, double and bf16 a NaN
  std::lock_guard<std::mutex> lock(Mu());
  Live()[p] = Mapping{base, open + page, bytes};
  alive_bytes += bytes;
  return p;
}

bool GuardedFree(void* p) {
  std::lock_guard<std::mutex> lock(Mu());
  auto it = Live().find(p);
  if (it == Live().end()) return false;
  munmap(it->second.base, it->second.mapped);
  alive_bytes -= it->second.bytes;
  Live().erase(it);
  return true;
}

size_t GuardedBytesAlive() {
  std::lock_guard<std::mutex> lock(Mu());
  return alive_bytes;
}

}  // namespace emu::internal

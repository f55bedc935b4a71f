#include "stability/ops/cuda/emulator/internal/guarded_memory.h"

#include <map>
#include <mutex>
#include <utility>

#include "stability/base/guarded_block.h"

namespace emu::internal {
namespace {

std::mutex& Mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<const void*, std::pair<stability::GuardedBlock, size_t>>& Live() {  // block, bytes asked for
  static auto* live = new std::map<const void*, std::pair<stability::GuardedBlock, size_t>>;
  return *live;
}
size_t alive_bytes = 0;

}  // namespace

void* GuardedAlloc(size_t bytes) {
  const stability::GuardedBlock b = stability::MapGuarded(bytes, 256, /*host_access=*/true);  // cudaMalloc's alignment
  if (b.data == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(Mu());
  Live()[b.data] = {b, bytes};
  alive_bytes += bytes;
  return b.data;
}

bool GuardedFree(void* p) {
  std::lock_guard<std::mutex> lock(Mu());
  auto it = Live().find(p);
  if (it == Live().end()) return false;
  stability::UnmapGuarded(it->second.first);
  alive_bytes -= it->second.second;
  Live().erase(it);
  return true;
}

size_t GuardedBytesAlive() {
  std::lock_guard<std::mutex> lock(Mu());
  return alive_bytes;
}

}  // namespace emu::internal

#include "stability/base/guarded_block.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace stability {

GuardedBlock MapGuarded(size_t bytes, size_t align, bool host_access) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t usable = ((bytes > 0 ? bytes : 1) + align - 1) / align * align;
  GuardedBlock b;
  b.open_bytes = (usable + page - 1) / page * page;
  b.mapped = b.open_bytes + page;
  // The guard page is mapped PROT_NONE with the rest and never opened; NORESERVE: a large
  // block costs only the pages written (the fill writes them all).
  void* base = mmap(nullptr, b.mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return GuardedBlock{};
  b.base = base;
  if (mprotect(base, b.open_bytes, PROT_READ | PROT_WRITE) != 0) {
    munmap(base, b.mapped);
    return GuardedBlock{};
  }
  std::memset(base, 0xff, b.open_bytes);
  if (!host_access) mprotect(base, b.open_bytes, PROT_NONE);
  b.data = static_cast<unsigned char*>(base) + b.open_bytes - usable;
  return b;
}

void UnmapGuarded(const GuardedBlock& block) {
  if (block.base != nullptr) munmap(block.base, block.mapped);
}

}  // namespace stability

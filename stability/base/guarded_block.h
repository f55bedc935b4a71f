// Memory that stands in for a GPU's: each block its own mapping, ending where a guard page
// that is never opened begins (a read or write past the end faults instead of touching the
// next block), and filled with 0xff bytes (every float, double and bf16 a NaN, every integer
// −1), because device memory is not zero: a kernel that reads what nothing wrote gets NaN, not
// a lucky 0. Used by the stand-in device (ops/testing/checked_device) and the CUDA emulator.
//
//   GuardedBlock b = MapGuarded(bytes, 64, /*host_access=*/false);
//   if (b.data == nullptr) ...;          // out of address space
//   mprotect(b.base, b.open_bytes, PROT_READ | PROT_WRITE);  // to open it, when not open
//   UnmapGuarded(b);
#ifndef STABILITY_BASE_GUARDED_BLOCK_H_
#define STABILITY_BASE_GUARDED_BLOCK_H_

#include <cstddef>

namespace stability {

struct GuardedBlock {
  void* data = nullptr;  // max(bytes, 1) rounded up to the alignment, ending at the guard page
  void* base = nullptr;  // the mapping: open_bytes (whole pages), then the guard page
  size_t open_bytes = 0;
  size_t mapped = 0;  // open_bytes + the guard page
};

// align: a power of two ≤ the page size. host_access false: the open pages are left PROT_NONE
// after the fill (the caller opens them). data is nullptr when mmap fails.
GuardedBlock MapGuarded(size_t bytes, size_t align, bool host_access);
void UnmapGuarded(const GuardedBlock& block);

}  // namespace stability

#endif  // STABILITY_BASE_GUARDED_BLOCK_H_

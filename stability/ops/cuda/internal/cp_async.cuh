// Asynchronous copies from global to shared memory (sm_80+, PTX "cp.async"): a thread issues
// copies, closes them into a group (CpAsyncCommit), and later waits until all but its newest N
// groups have landed (CpAsyncWait<N>); then a __syncthreads makes them every thread's. The
// copies bypass the registers, so a kernel can load its next tile while it computes on this one
// (FlashAttention-2's double buffering) without holding the tile in registers meanwhile.
//
// Under the CUDA emulator a copy runs at the wait that completes it — the latest a GPU may
// land it — and its destination is poisoned (0xff) at issue, so a kernel that reads a tile
// before waiting for it reads garbage there, and the race checker sees a write at both ends.
#ifndef STABILITY_OPS_CUDA_INTERNAL_CP_ASYNC_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_CP_ASYNC_CUH_

#include <cstdint>
#include <cstring>

namespace stability::ops::cuda::internal {

// Copies kBytes (4, 8 or 16; both addresses aligned to it) from src to dst in shared memory,
// or writes kBytes zeros when !read (src is then not read, but must still be a valid address).
template <int kBytes>
__device__ inline void CpAsync(void* dst, const void* src, bool read) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__)
  const unsigned shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int src_bytes = read ? kBytes : 0;
  if constexpr (kBytes == 16) {  // .cg: through L2 only (a tile is read once a block)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared), "l"(src), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  if (reinterpret_cast<uintptr_t>(dst) % kBytes != 0 || reinterpret_cast<uintptr_t>(src) % kBytes != 0) {
    ::emu::Fault("cp.async: an address not aligned to the copy's size");
  }
  auto& copies = ::emu::RunningAsyncCopies();
  for (int b = 0; b < kBytes; b += 4) {  // 4 bytes at a time: the race checker sees each
    const uint32_t poison = 0xffffffffu;
    std::memcpy(static_cast<unsigned char*>(dst) + b, &poison, 4);
  }
  copies.pending.push_back(
      {dst, src, static_cast<uint32_t>(kBytes), read ? static_cast<uint32_t>(kBytes) : 0u, copies.committed});
#endif
}

// Closes the copies issued since the last commit into a group.
__device__ inline void CpAsyncCommit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  ++::emu::RunningAsyncCopies().committed;
#endif
}

// Waits until at most kPending of this thread's committed groups are in flight.
template <int kPending>
__device__ inline void CpAsyncWait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#elif defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
  auto& copies = ::emu::RunningAsyncCopies();
  size_t kept = 0;
  for (const auto& c : copies.pending) {
    if (c.group >= copies.committed - kPending) {
      copies.pending[kept++] = c;
      continue;
    }
    for (uint32_t b = 0; b < c.bytes; b += 4) {
      uint32_t word = 0;
      if (b < c.src_bytes) std::memcpy(&word, static_cast<const unsigned char*>(c.src) + b, 4);
      std::memcpy(static_cast<unsigned char*>(c.dst) + b, &word, 4);
    }
  }
  copies.pending.resize(kept);
#endif
}

// One step of a block's double-buffered stream of items (item i in buffer i % 2; issue(i)
// copies it there and commits), before item `it` is used: once every thread is done with item
// it − 1, its buffer takes item it + 1; then item it's copies are waited for and, after the
// barrier, every thread's. Item 0 is issued before the first step.
template <typename Issue>
__device__ inline void DoubleBufferedNext(int64_t it, int64_t items, const Issue& issue) {
  __syncthreads();
  if (it + 1 < items) {
    issue(it + 1);
    CpAsyncWait<1>();
  } else {
    CpAsyncWait<0>();
  }
  __syncthreads();
}

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_CP_ASYNC_CUH_

// The entry points GCC's -fsanitize=thread instrumentation calls, in the emulator's
// instrumented builds (tools/cuda_emulator.bzl, `instrument`): every load and store goes to
// the build's runtime (internal::OnAccess: racecheck.cc or traffic.cc), not to TSan's, which
// is not linked. Function entry and exit are not instrumented (the build's --param).
#include <cstdint>

#include "stability/ops/cuda/emulator/internal/instrumented.h"

#define STABILITY_EMU_ACCESS(n)                                                               \
  extern "C" void __tsan_read##n(void* p) { emu::internal::OnAccess(p, n, false); }           \
  extern "C" void __tsan_write##n(void* p) { emu::internal::OnAccess(p, n, true); }           \
  extern "C" void __tsan_unaligned_read##n(void* p) { emu::internal::OnAccess(p, n, false); } \
  extern "C" void __tsan_unaligned_write##n(void* p) { emu::internal::OnAccess(p, n, true); }
STABILITY_EMU_ACCESS(1)
STABILITY_EMU_ACCESS(2)
STABILITY_EMU_ACCESS(4)
STABILITY_EMU_ACCESS(8)
STABILITY_EMU_ACCESS(16)
#undef STABILITY_EMU_ACCESS
extern "C" void __tsan_read_range(void* p, unsigned long n) { emu::internal::OnAccess(p, n, false); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { emu::internal::OnAccess(p, n, true); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}

// The atomics of instrumented code (function-local statics' guards, std::mutex, shared_ptr):
// performed as written (TSan's memory orders are GCC's __ATOMIC_* values), not checked.
#define STABILITY_EMU_ATOMICS(bits, type)                                                                              \
  extern "C" type __tsan_atomic##bits##_load(const volatile type* a, int mo) { return __atomic_load_n(a, mo); }        \
  extern "C" void __tsan_atomic##bits##_store(volatile type* a, type v, int mo) { __atomic_store_n(a, v, mo); }        \
  extern "C" type __tsan_atomic##bits##_exchange(volatile type* a, type v, int mo) {                                   \
    return __atomic_exchange_n(a, v, mo);                                                                              \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_fetch_add(volatile type* a, type v, int mo) {                                  \
    return __atomic_fetch_add(a, v, mo);                                                                               \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_fetch_sub(volatile type* a, type v, int mo) {                                  \
    return __atomic_fetch_sub(a, v, mo);                                                                               \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_fetch_and(volatile type* a, type v, int mo) {                                  \
    return __atomic_fetch_and(a, v, mo);                                                                               \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_fetch_or(volatile type* a, type v, int mo) {                                   \
    return __atomic_fetch_or(a, v, mo);                                                                                \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_fetch_xor(volatile type* a, type v, int mo) {                                  \
    return __atomic_fetch_xor(a, v, mo);                                                                               \
  }                                                                                                                    \
  extern "C" int __tsan_atomic##bits##_compare_exchange_strong(volatile type* a, type* c, type v, int mo,              \
                                                               int fail_mo) {                                          \
    return __atomic_compare_exchange_n(a, c, v, false, mo, fail_mo);                                                   \
  }                                                                                                                    \
  extern "C" int __tsan_atomic##bits##_compare_exchange_weak(volatile type* a, type* c, type v, int mo, int fail_mo) { \
    return __atomic_compare_exchange_n(a, c, v, true, mo, fail_mo);                                                    \
  }                                                                                                                    \
  extern "C" type __tsan_atomic##bits##_compare_exchange_val(volatile type* a, type c, type v, int mo, int fail_mo) {  \
    __atomic_compare_exchange_n(a, &c, v, false, mo, fail_mo);                                                         \
    return c;                                                                                                          \
  }
STABILITY_EMU_ATOMICS(8, uint8_t)
STABILITY_EMU_ATOMICS(16, uint16_t)
STABILITY_EMU_ATOMICS(32, uint32_t)
STABILITY_EMU_ATOMICS(64, uint64_t)
#undef STABILITY_EMU_ATOMICS
extern "C" void __tsan_atomic_thread_fence(int mo) { __atomic_thread_fence(mo); }
extern "C" void __tsan_atomic_signal_fence(int mo) { __atomic_signal_fence(mo); }
